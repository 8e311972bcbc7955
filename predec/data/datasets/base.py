"""Shared machinery of the dataset readers: file lists checked up front, samples loaded through :mod:`predec.data.io`.

- :class:`SampleDataset`: a torch Dataset of common sample dicts with an optional transform and a clear repr.
- :class:`SegmentationDataset`: (image, label PNG) pairs, a raw-label check and an optional label conversion.
- :class:`DepthSplitDataset`: ``rgb_path depth_path focal`` split files (the BTS / Monodepth convention), with a
  check of the depth unit on a few files (:meth:`DepthSplitDataset.check_depth_unit`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predec.data.io import (
    DataError,
    check_depth_median,
    check_depth_range,
    check_labels,
    check_same_size,
    read_depth,
    read_image,
    read_label,
    read_split_file,
)
from predec.data.sample import make_sample, transform_sample

Transform = Callable[[dict[str, Any]], Any]


class SampleDataset(torch.utils.data.Dataset, abc.ABC):
    """A dataset of common sample dicts (see :mod:`predec.data.sample`).

    Subclasses fill ``self.root`` and their item list, and implement :meth:`__len__` and :meth:`load`;
    ``__getitem__`` applies ``transform`` to the loaded sample dict.
    """

    name: str = "dataset"
    classes: tuple[str, ...] | None = None

    def __init__(self, root: str | Path, transform: Transform | None = None) -> None:
        self.root = Path(root)
        self.transform = transform

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def load(self, index: int) -> dict[str, Any]:
        """The untransformed sample dict of item ``index``."""

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        sample = self.load(int(index) % len(self))
        return transform_sample(self.transform, sample)

    def _repr_fields(self) -> dict[str, Any]:
        return {"root": str(self.root)}

    def __repr__(self) -> str:
        fields = {**self._repr_fields(), "samples": len(self)}
        if self.classes is not None:
            fields["classes"] = len(self.classes)
        lines = [f"{type(self).__name__}("] + [f"  {key}={value!r}," for key, value in fields.items()]
        if self.transform is not None:
            lines.append("  transform=" + repr(self.transform).replace("\n", "\n  ") + ",")
        return "\n".join([*lines, ")"])


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise a :class:`DataError` saying what it should hold."""
    if not path.is_dir():
        raise DataError(f"{path}: directory not found (expected {what})")
    return path


class SegmentationDataset(SampleDataset):
    """Pairs of an RGB image and a class-index label PNG.

    Subclasses set ``classes``, fill ``self.pairs`` with ``(image_path, label_path)`` and may override
    :meth:`convert_labels` (the raw values are checked there, before any conversion, so errors show file values).
    """

    def __init__(self, root: str | Path, transform: Transform | None = None) -> None:
        super().__init__(root, transform)
        self.pairs: list[tuple[Path, Path]] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def convert_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Check raw label values and map them to class ids (identity here: the file holds class ids)."""
        assert self.classes is not None
        return check_labels(raw, len(self.classes), path)

    def load(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        labels = read_label(label_path)
        check_same_size(image, labels, image_path, label_path)
        labels = self.convert_labels(labels, label_path)
        meta = {"dataset": self.name, "index": index, "path": str(image_path), "label_path": str(label_path)}
        return make_sample(image, labels=labels, meta=meta)


def _join(root: Path, relative: str) -> Path:
    """Join a split-file path to its root; a leading '/' (as in the BTS NYU lists) is relative to the root too."""
    return root / relative.lstrip("/")


def resolve_split_file(root: Path, split_file: str | Path) -> Path:
    """``split_file`` as given if it exists, else relative to ``root``; a :class:`DataError` if neither exists."""
    split_file = Path(split_file)
    if split_file.is_file():
        return split_file
    if not split_file.is_absolute() and (root / split_file).is_file():
        return root / split_file
    raise DataError(f"{split_file}: split file not found (also looked for {root / split_file})")


class DepthSplitDataset(SampleDataset):
    """Depth datasets listed by a split file with lines ``rgb_path depth_path focal``.

    Paths are relative to ``root`` (images) and ``gt_root`` (depth; defaults to ``root``). A depth entry ``None``
    (KITTI test lists) means no ground truth: such lines are skipped unless ``keep_without_depth``, in which case
    their samples have no ``"depth"`` key. Every listed file is checked when the split is read; a line pointing
    nowhere raises a :class:`DataError` naming the split file and the line number.

    Args:
        root: directory the image paths are relative to.
        split_file: the split file (as given, or relative to ``root``).
        depth_scale: metres per PNG unit.
        gt_root: directory the depth paths are relative to; ``None`` = ``root``.
        keep_without_depth: keep lines whose depth is ``None`` (samples without depth) instead of skipping them.
        transform: applied to the sample dict.
    """

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path,
        *,
        depth_scale: float,
        gt_root: str | Path | None = None,
        keep_without_depth: bool = False,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(root, transform)
        require_dir(self.root, "the image root of the split file's rgb paths")
        self.gt_root = Path(gt_root) if gt_root is not None else self.root
        require_dir(self.gt_root, "the ground-truth root of the split file's depth paths")
        self.split_file = resolve_split_file(self.root, split_file)
        self.depth_scale = float(depth_scale)
        self.keep_without_depth = keep_without_depth
        self.items: list[tuple[Path, Path | None, float]] = []
        self.skipped_without_depth = 0
        for line_number, (rgb, depth, focal) in read_split_file(self.split_file, 3):
            where = f"{self.split_file}, line {line_number}"
            rgb_path = _join(self.root, rgb)
            if not rgb_path.is_file():
                raise DataError(f"{where}: image {rgb_path} not found")
            depth_path = None if depth == "None" else _join(self.gt_root, depth)
            if depth_path is None and not keep_without_depth:
                self.skipped_without_depth += 1
                continue
            if depth_path is not None and not depth_path.is_file():
                raise DataError(f"{where}: depth {depth_path} not found")
            try:
                focal_value = float(focal)
            except ValueError:
                raise DataError(f"{where}: focal {focal!r} is not a number") from None
            self.items.append((rgb_path, depth_path, focal_value))
        if not self.items:
            raise DataError(
                f"{self.split_file}: no sample with depth ground truth "
                f"({self.skipped_without_depth} lines have depth 'None'; pass keep_without_depth=True to keep them)"
            )

    def __len__(self) -> int:
        return len(self.items)

    def crop(self, image: np.ndarray, depth: np.ndarray | None, path: Path) -> tuple[Any, Any, dict[str, Any]]:
        """Optional dataset-specific crop of image (H, W, 3) and depth (H, W); returns extra meta (none here)."""
        return image, depth, {}

    def load(self, index: int) -> dict[str, Any]:
        rgb_path, depth_path, focal = self.items[index]
        image = read_image(rgb_path)
        depth = None
        if depth_path is not None:
            depth = read_depth(depth_path, self.depth_scale)
            check_same_size(image, depth, rgb_path, depth_path)
        image, depth, extra = self.crop(image, depth, rgb_path)
        meta = {"dataset": self.name, "index": index, "path": str(rgb_path), "focal": focal, **extra}
        if depth_path is not None:
            meta["depth_path"] = str(depth_path)
            meta["depth_scale"] = self.depth_scale
        return make_sample(image, depth=depth, meta=meta)

    def check_depth_unit(self, min_depth: float, max_depth: float, num_files: int = 8) -> None:
        """Refuse the split if its depths do not fit the model's range: a wrong unit or ``depth_scale``.

        Reads the depth PNGs of ``num_files`` items spread evenly over the split (the first and the last included;
        not their images, a few milliseconds per file) and applies the per-sample check
        (:func:`predec.data.io.check_depth_range`: most values outside ``(min_depth, max_depth]``) to each, then the
        dataset check (:func:`predec.data.io.check_depth_median`: the median implausible for ``max_depth``).
        """
        items = [depth for _, depth, _ in self.items if depth is not None]
        if not items:
            return
        picks = sorted({round(float(i)) for i in np.linspace(0, len(items) - 1, min(num_files, len(items)))})
        files = [items[i] for i in picks]
        depths = [read_depth(path, self.depth_scale) for path in files]
        for path, depth in zip(files, depths):
            check_depth_range(depth, min_depth, max_depth, str(path), self.depth_scale)
        check_depth_median(depths, files, max_depth, self.split_file, self.depth_scale)

    def _repr_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"root": str(self.root), "split_file": str(self.split_file)}
        if self.gt_root != self.root:
            fields["gt_root"] = str(self.gt_root)
        fields["depth_scale"] = self.depth_scale
        if self.skipped_without_depth:
            fields["skipped_without_depth"] = self.skipped_without_depth
        return fields

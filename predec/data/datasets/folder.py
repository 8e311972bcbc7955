"""Image folders: unlabeled images (self-supervised pre-training) and class sub-folders (classification)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from predec.data.datasets.base import SampleDataset, Transform, require_dir
from predec.data.io import IMAGE_EXTENSIONS, DataError, read_image
from predec.data.sample import make_sample


def find_images(root: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files under ``root`` (recursive, sorted) whose lower-case suffix is in ``extensions``."""
    suffixes = {ext.lower() for ext in extensions}
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in suffixes and path.is_file())


class UnlabeledFolder(SampleDataset):
    """Every image under a folder, recursively, as samples with only ``"image"`` and ``"meta"``.

    For self-supervised pre-training (pair it with :class:`predec.data.transforms.TwoViewCrop`).

    Args:
        root: the folder.
        extensions: file suffixes to take (case-insensitive).
        transform: applied to the sample dict.
    """

    name = "folder"

    def __init__(
        self,
        root: str | Path,
        *,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(root, transform)
        require_dir(self.root, "images")
        self.extensions = tuple(extensions)
        self.paths = find_images(self.root, self.extensions)
        if not self.paths:
            raise DataError(f"{self.root}: no images with extensions {self.extensions} found (searched recursively)")

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        return make_sample(read_image(path), meta={"dataset": self.name, "index": index, "path": str(path)})


class ClassificationFolder(torch.utils.data.Dataset):
    """Images in class sub-folders, ``root/<class>/**/<image>``, as ``(image, label)`` pairs.

    Like torchvision's ``ImageFolder`` (classes sorted by folder name unless ``classes`` pins them), but images are
    read through :func:`predec.data.io.read_image` (errors name the file), empty class folders are allowed (a
    validation split may lack a class) and an empty tree is an error.

    Args:
        root: the folder of class sub-folders.
        classes: class names in label order; every sub-folder must be one of them (missing ones have no images).
            ``None`` = the sorted sub-folder names.
        extensions: file suffixes to take (case-insensitive).
        transform: applied to the image, a ``tv_tensors.Image`` uint8 (3, H, W).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "one sub-folder per class")
        self.transform = transform
        folders = sorted(path.name for path in self.root.iterdir() if path.is_dir())
        if classes is None:
            if not folders:
                raise DataError(f"{self.root}: no class sub-folders found")
            classes = folders
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise DataError(f"{self.root}: sub-folders {unknown} are not among the given classes {list(classes)}")
        self.classes: list[str] = list(classes)
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            if (self.root / name).is_dir():
                self.samples += [(path, label) for path in find_images(self.root / name, extensions)]
        if not self.samples:
            raise DataError(f"{self.root}: no images with extensions {tuple(extensions)} in the class sub-folders")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(read_image(path))).permute(2, 0, 1))
        return (self.transform(image) if self.transform is not None else image), label

    def __repr__(self) -> str:
        text = f"ClassificationFolder(\n  root={str(self.root)!r},\n  samples={len(self)},"
        text += f"\n  classes={len(self.classes)},"
        if self.transform is not None:
            text += "\n  transform=" + repr(self.transform).replace("\n", "\n  ") + ","
        return text + "\n)"

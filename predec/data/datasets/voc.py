"""Pascal VOC 2012 segmentation (+ SBD-augmented ``SegmentationClassAug``): palette PNG labels read as indices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predec.data.datasets.base import SegmentationDataset, Transform, require_dir
from predec.data.io import DataError, read_split_file

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
"""The 21 classes of Pascal VOC 2012 (index 0 = background; 255 = ignore, the object borders)."""

IMAGE_SUFFIXES = (".jpg", ".png")
"""Image file suffixes looked for in ``JPEGImages`` (real VOC: ``.jpg``; ``predec data synth``: lossless ``.png``)."""


def _voc_dir(root: Path) -> Path:
    """``root/VOCdevkit/VOC2012`` or, if ``root`` is that directory itself, ``root``."""
    for candidate in (root / "VOCdevkit" / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(
        f"{root}: no VOC layout found; expected {root / 'VOCdevkit/VOC2012/JPEGImages'} "
        "(or pass the VOC2012 directory itself)"
    )


class PascalVOC(SegmentationDataset):
    """Pascal VOC 2012 semantic segmentation.

    Layout: ``root/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug,
    ImageSets/Segmentation/<split>.txt}``; ``root`` may also be the ``VOC2012`` directory. The split file lists one
    image id per line; images are ``JPEGImages/<id>.jpg`` (or ``.png``), labels ``<label dir>/<id>.png``, palette
    PNGs read as class indices (255 = ignore). SBD training: ``split="train_aug", augmented=True``.

    Args:
        root: see above.
        split: name of the split file in ``ImageSets/Segmentation`` (``train``, ``val``, ``train_aug``, ...).
        augmented: read labels from ``SegmentationClassAug`` instead of ``SegmentationClass``.
        classes: class names; labels must lie in ``0..len(classes)-1`` or be 255 (the synthetic layout written by
            ``predec data synth`` uses ``SCENE_CLASSES``).
        transform: applied to the sample dict.
    """

    name = "voc"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        augmented: bool = False,
        classes: Sequence[str] = VOC_CLASSES,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(root, transform)
        if not 0 < len(classes) <= 255:
            raise ValueError(f"classes: {len(classes)} names given, expected 1..255")
        self.classes = tuple(classes)
        self.split, self.augmented = split, augmented
        self.voc_dir = _voc_dir(self.root)
        label_dir = require_dir(
            self.voc_dir / ("SegmentationClassAug" if augmented else "SegmentationClass"), "the label PNGs"
        )
        self.split_file = self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        for line_number, (image_id,) in read_split_file(self.split_file, 1):
            candidates = [self.voc_dir / "JPEGImages" / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
            image_path = next((path for path in candidates if path.is_file()), None)
            where = f"{self.split_file}, line {line_number}"
            if image_path is None:
                raise DataError(f"{where}: image {candidates[0]} not found (nor {candidates[1].name})")
            label_path = label_dir / f"{image_id}.png"
            if not label_path.is_file():
                raise DataError(f"{where}: label {label_path} not found")
            self.pairs.append((image_path, label_path))

    def _repr_fields(self) -> dict[str, Any]:
        return {"root": str(self.root), "split": self.split, "augmented": self.augmented}

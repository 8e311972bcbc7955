"""Cityscapes fine annotations: ``*_gtFine_labelTrainIds.png`` (19 classes + 255), or ``*_labelIds.png`` mapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from predec.data.datasets.base import SegmentationDataset, Transform, require_dir
from predec.data.io import DataError, check_labels
from predec.data.sample import IGNORE_INDEX

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
"""The 19 Cityscapes evaluation classes, indexed by train id."""

CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""Label id → train id of cityscapesScripts' ``labels.py``; every other id 0..33 → 255 (ignore)."""

_NUM_LABEL_IDS = 34  # label ids 0..33 appear in *_gtFine_labelIds.png
_LABEL_TYPES = ("labelTrainIds", "labelIds")


def _id_to_train_id_table() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


class Cityscapes(SegmentationDataset):
    """Cityscapes semantic segmentation (fine annotations).

    Layout: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
    ``root/gtFine/<split>/<city>/<name>_gtFine_<label_type>.png``.

    Args:
        root: the ``cityscapes`` directory.
        split: ``train``, ``val`` or ``test``.
        label_type: ``"labelTrainIds"`` (files made by cityscapesScripts' ``createTrainIdLabelImgs``; values 0..18 or
            255) or ``"labelIds"`` (the original ids 0..33, mapped to train ids with
            :data:`CITYSCAPES_ID_TO_TRAIN_ID`, other ids → 255).
        transform: applied to the sample dict.
    """

    name = "cityscapes"
    classes = CITYSCAPES_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        label_type: str = "labelTrainIds",
        transform: Transform | None = None,
    ) -> None:
        super().__init__(root, transform)
        if label_type not in _LABEL_TYPES:
            raise ValueError(f"label_type={label_type!r}: expected one of {_LABEL_TYPES}")
        self.split, self.label_type = split, label_type
        image_dir = require_dir(self.root / "leftImg8bit" / split, "<city>/*_leftImg8bit.png images")
        label_dir = require_dir(self.root / "gtFine" / split, f"<city>/*_gtFine_{label_type}.png labels")
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DataError(f"{image_dir}: no <city>/*_leftImg8bit.png images found")
        for image_path in images:
            stem = image_path.name[: -len("_leftImg8bit.png")]
            label_path = label_dir / image_path.parent.name / f"{stem}_gtFine_{label_type}.png"
            if not label_path.is_file():
                raise DataError(f"{label_path}: label not found for image {image_path}")
            self.pairs.append((image_path, label_path))
        self._table = _id_to_train_id_table() if label_type == "labelIds" else None

    def convert_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Train ids are checked as they are; label ids are checked against 0..33 and mapped to train ids."""
        if self._table is None:
            return check_labels(raw, len(self.classes), path)
        check_labels(raw, _NUM_LABEL_IDS, path)
        return self._table[raw]

    def _repr_fields(self) -> dict[str, Any]:
        return {"root": str(self.root), "split": self.split, "label_type": self.label_type}

"""ADE20K (SceneParsing ``ADEChallengeData2016``): 150 classes, ``reduce_zero_label`` (0 → 255, others − 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from predec.data.datasets.base import SegmentationDataset, Transform, require_dir
from predec.data.io import DataError, check_labels
from predec.data.sample import IGNORE_INDEX

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""The 150 ADE20K SceneParsing classes, indexed after the zero-label reduction."""


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """ADE20K's label reduction: 0 ("other") → 255 (ignore), 1..150 → 0..149, 255 stays 255.

    Args:
        raw: uint8 (H, W) raw annotation values.

    Returns:
        uint8 (H, W) class ids.
    """
    reduced = raw.astype(np.int16) - 1
    reduced[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
    return reduced.astype(np.uint8)


class ADE20K(SegmentationDataset):
    """ADE20K scene parsing.

    Layout: ``root/ADEChallengeData2016/images/<split>/*.jpg`` and ``.../annotations/<split>/<same name>.png``
    (``root`` may also be the ``ADEChallengeData2016`` directory). Raw annotation values 0..150 are checked, then
    reduced with :func:`reduce_zero_label` (always applied: 0 means "other" and is never a training class).

    Args:
        root: see above.
        split: ``training`` or ``validation``.
        transform: applied to the sample dict.
    """

    name = "ade20k"
    classes = ADE20K_CLASSES

    def __init__(self, root: str | Path, split: str = "training", *, transform: Transform | None = None) -> None:
        super().__init__(root, transform)
        self.split = split
        base = self.root / "ADEChallengeData2016"
        base = base if base.is_dir() else self.root
        image_dir = require_dir(base / "images" / split, "the *.jpg images of ADEChallengeData2016")
        label_dir = require_dir(base / "annotations" / split, "the *.png annotations of ADEChallengeData2016")
        images = sorted(image_dir.glob("*.jpg"))
        if not images:
            raise DataError(f"{image_dir}: no *.jpg images found")
        for image_path in images:
            label_path = label_dir / f"{image_path.stem}.png"
            if not label_path.is_file():
                raise DataError(f"{label_path}: annotation not found for image {image_path}")
            self.pairs.append((image_path, label_path))

    def convert_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Check raw values 0..150 (or 255), then apply :func:`reduce_zero_label`."""
        check_labels(raw, len(self.classes) + 1, path)
        return reduce_zero_label(raw)

    def _repr_fields(self) -> dict[str, Any]:
        return {"root": str(self.root), "split": self.split}

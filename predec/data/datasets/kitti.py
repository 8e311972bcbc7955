"""KITTI Eigen split (BTS / Monodepth split-file layout): 16-bit depth PNGs in 1/256 m, optional KB crop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from predec.data.datasets.base import DepthSplitDataset, Transform
from predec.data.io import DataError

KITTI_DEPTH_SCALE = 1.0 / 256.0
"""Metres per unit of the KITTI depth PNGs."""

KB_CROP_SIZE = (352, 1216)
"""(H, W) of the KITTI benchmark (KB) crop, taken from the bottom centre of the image."""


class KITTIEigen(DepthSplitDataset):
    """KITTI (Eigen split) from a split file with lines ``rgb_path depth_path focal``.

    As in BTS: image paths relative to ``root`` (the raw data, e.g.
    ``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png``), depth paths relative to ``gt_root``
    (e.g. ``2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png``). Depth PNGs are 16-bit,
    ``metres = value / 256``, 0 = no LiDAR point. Test lists may hold ``None`` as depth: those lines are skipped
    (counted in ``skipped_without_depth``) unless ``keep_without_depth``.

    Args:
        root: directory the image paths are relative to.
        split_file: the split file (as given, or relative to ``root``).
        gt_root: directory the depth paths are relative to; ``None`` = ``root``.
        depth_scale: metres per PNG unit (default ``KITTI_DEPTH_SCALE``, metres × 256: 1/256);
            ``data.reader_kwargs.depth_scale`` for copies stored in another unit.
        kb_crop: crop image and depth to 352x1216 from the bottom centre (``top = H - 352``,
            ``left = (W - 1216) // 2``); the offset goes to ``meta["crop_offset"] = (top, left)``.
        keep_without_depth: keep lines whose depth is ``None`` (samples without depth) instead of skipping them.
        transform: applied to the sample dict.
    """

    name = "kitti"

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path,
        *,
        gt_root: str | Path | None = None,
        depth_scale: float = KITTI_DEPTH_SCALE,
        kb_crop: bool = False,
        keep_without_depth: bool = False,
        transform: Transform | None = None,
    ) -> None:
        self.kb_crop = kb_crop
        super().__init__(
            root,
            split_file,
            depth_scale=depth_scale,
            gt_root=gt_root,
            keep_without_depth=keep_without_depth,
            transform=transform,
        )

    def crop(self, image: np.ndarray, depth: np.ndarray | None, path: Path) -> tuple[Any, Any, dict[str, Any]]:
        """The KB crop when ``kb_crop`` is set."""
        if not self.kb_crop:
            return image, depth, {}
        height, width = image.shape[:2]
        crop_height, crop_width = KB_CROP_SIZE
        if height < crop_height or width < crop_width:
            raise DataError(
                f"{path}: image {width}x{height} (WxH) is smaller than the KB crop {crop_width}x{crop_height}; "
                "pass kb_crop=False for images that are not full KITTI frames"
            )
        top, left = height - crop_height, (width - crop_width) // 2
        image = image[top : top + crop_height, left : left + crop_width]
        if depth is not None:
            depth = depth[top : top + crop_height, left : left + crop_width]
        return image, depth, {"crop_offset": (top, left)}

    def _repr_fields(self) -> dict[str, Any]:
        return {**super()._repr_fields(), "kb_crop": self.kb_crop}

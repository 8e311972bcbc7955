"""NYU-Depth-v2 (BTS / Monodepth split-file layout): 16-bit depth PNGs in millimetres."""

from __future__ import annotations

from pathlib import Path

from predec.data.datasets.base import DepthSplitDataset, Transform

NYU_DEPTH_SCALE = 1.0 / 1000.0
"""Metres per unit of the NYU-Depth-v2 depth PNGs (millimetres)."""


class NYUDepthV2(DepthSplitDataset):
    """NYU-Depth-v2 from a split file with lines ``rgb_path depth_path focal``.

    The usual layout (BTS): ``root = .../sync`` with ``train_files`` lines like
    ``/kitchen_0028a/rgb_00045.jpg /kitchen_0028a/sync_depth_00045.png 518.8579``, or
    ``root = .../official_splits/test`` for the Eigen test split. A leading ``/`` is relative to ``root``.
    Depth PNGs are 16-bit, ``metres = value / 1000``, 0 = invalid. Samples carry ``"image"``, ``"depth"`` and
    ``meta["focal"]``.

    Args:
        root: directory the image paths are relative to.
        split_file: the split file (as given, or relative to ``root``).
        gt_root: directory the depth paths are relative to; ``None`` = ``root``.
        depth_scale: metres per PNG unit (default ``NYU_DEPTH_SCALE``, millimetres: 0.001);
            ``data.reader_kwargs.depth_scale`` for copies stored in another unit.
        keep_without_depth: keep lines whose depth is ``None`` (samples without depth) instead of skipping them.
        transform: applied to the sample dict.
    """

    name = "nyu"

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path,
        *,
        gt_root: str | Path | None = None,
        depth_scale: float = NYU_DEPTH_SCALE,
        keep_without_depth: bool = False,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(
            root,
            split_file,
            depth_scale=depth_scale,
            gt_root=gt_root,
            keep_without_depth=keep_without_depth,
            transform=transform,
        )

"""Task heads: the last layer of a dense model, turning the decoder output into depth or class logits.

Both heads upsample bilinearly to the requested output size *before* their final non-linearity: the depth head
resizes its pre-sigmoid map (so the resized depth stays inside ``(min_depth, max_depth]``), the segmentation head
resizes its logits (as mmsegmentation and smp do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TASKS: tuple[str, ...] = ("depth", "segmentation")


def _resize(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Bilinear resize of (B, C, h, w) to ``size`` (no-op when ``size`` is None).

    The decision depends on ``size`` only, never on tensor shapes, so traced/exported graphs stay size-generic.
    """
    if size is None:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DepthHead(nn.Module):
    """Metric depth: ``sigmoid(conv3x3(x)) * (max_depth - min_depth) + min_depth``.

    The output lies in ``(min_depth, max_depth]`` (the upper bound is reached only when the sigmoid saturates in
    floating point). With ``min_depth=0`` this is the ×Net / BTS head ``sigmoid(conv) * max_depth``.

    Args:
        in_channels: channels of the decoder output.
        max_depth: largest predictable depth in metres (10 for NYU, 80 for KITTI).
        min_depth: smallest predictable depth in metres, ``0 <= min_depth < max_depth``.
    """

    def __init__(self, in_channels: int, *, max_depth: float = 10.0, min_depth: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(f"Depth head needs 0 <= min_depth < max_depth, got {min_depth=}, {max_depth=}.")
        self.max_depth = float(max_depth)
        self.min_depth = float(min_depth)
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Args:
            x: decoder output (B, in_channels, h, w).
            size: output (H, W); the pre-sigmoid map is resized bilinearly to it. None keeps (h, w) (for decoders
                whose output is already at full resolution).

        Returns:
            Depth in metres (B, 1, H, W).
        """
        logits = _resize(self.conv(x), size)
        return torch.sigmoid(logits) * (self.max_depth - self.min_depth) + self.min_depth

    def extra_repr(self) -> str:
        return f"min_depth={self.min_depth}, max_depth={self.max_depth}"


class SegmentationHead(nn.Module):
    """Per-pixel class logits: ``conv1x1(x)``.

    Args:
        in_channels: channels of the decoder output.
        num_classes: number of classes (the ignore label, 255, is not a class).
    """

    def __init__(self, in_channels: int, *, num_classes: int) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"Segmentation head needs num_classes >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.conv = nn.Conv2d(in_channels, self.num_classes, kernel_size=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Args:
            x: decoder output (B, in_channels, h, w).
            size: output (H, W); the logits are resized bilinearly to it. None keeps (h, w).

        Returns:
            Logits (B, num_classes, H, W).
        """
        return _resize(self.conv(x), size)


def build_head(
    task: str, in_channels: int, *, num_classes: int | None = None, max_depth: float = 10.0, min_depth: float = 0.0
) -> DepthHead | SegmentationHead:
    """Build the head of ``task``.

    Args:
        task: ``"depth"`` or ``"segmentation"``.
        in_channels: channels of the decoder output.
        num_classes: number of classes (segmentation only, required there).
        max_depth: largest depth in metres (depth only).
        min_depth: smallest depth in metres (depth only).
    """
    if task == "depth":
        return DepthHead(in_channels, max_depth=max_depth, min_depth=min_depth)
    if task == "segmentation":
        if num_classes is None:
            raise ValueError("task='segmentation' needs num_classes (the number of classes, e.g. 21 for VOC).")
        return SegmentationHead(in_channels, num_classes=num_classes)
    raise ValueError(f"Unknown task {task!r}; valid tasks: {', '.join(TASKS)}.")

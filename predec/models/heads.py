"""Task heads: the last layers of a dense model, turning the decoder output into depth or class logits.

A head is ``convs`` optional hidden blocks (Conv3×3-BN-ReLU, ``channels`` wide, at the decoder output's own
resolution), then its final convolution. Both heads upsample bilinearly to the requested output size *before* their
final non-linearity: the depth head resizes its pre-sigmoid map (so the resized depth stays inside
``(min_depth, max_depth]``), the segmentation head resizes its logits (as mmsegmentation and smp do).

With ``convs=0`` a head is its final convolution alone (state-dict keys ``conv.weight``, ``conv.bias``), the head of
every model saved before the blocks existed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TASKS: tuple[str, ...] = ("depth", "segmentation")
HEAD_OPTIONS: dict[str, Any] = {"convs": 0, "channels": None}
"""The head options (``head_kwargs``) and their defaults when the decoder declares none (``Decoder.head_defaults``)."""
LEGACY_HEAD: dict[str, Any] = {"convs": 0}
"""The head of models saved before the head options were recorded in their config: the final convolution alone."""


class ConvBlock(nn.Module):
    """Conv3×3 (no bias) → BatchNorm2d → ReLU, resolution kept; state-dict keys ``conv.weight``, ``bn.*``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, h, w) → (B, out_channels, h, w)."""
        return F.relu(self.bn(self.conv(x)))


def _blocks(in_channels: int, convs: int, channels: int | None) -> tuple[nn.Sequential | None, int]:
    """The hidden blocks of a head (None for ``convs=0``, so such a head registers no module) and their width."""
    if isinstance(convs, bool) or not isinstance(convs, int) or convs < 0:
        raise ValueError(f"Head option convs={convs!r} must be an integer >= 0 (the number of Conv3x3-BN-ReLU blocks).")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
        raise ValueError(
            f"Head option channels={channels!r} must be an integer >= 1 (the blocks' width), or None for the decoder "
            "output's width."
        )
    if convs == 0:
        return None, in_channels
    width = in_channels if channels is None else channels
    blocks = [ConvBlock(in_channels if i == 0 else width, width) for i in range(convs)]
    return nn.Sequential(*blocks), width


def _resize(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Bilinear resize of (B, C, h, w) to ``size`` (no-op when ``size`` is None).

    The decision depends on ``size`` only, never on tensor shapes, so traced/exported graphs stay size-generic.
    """
    if size is None:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DepthHead(nn.Module):
    """Metric depth: ``sigmoid(conv3x3(blocks(x))) * (max_depth - min_depth) + min_depth``.

    The output lies in ``(min_depth, max_depth]`` (the upper bound is reached only when the sigmoid saturates in
    floating point). With ``min_depth=0`` and ``convs=0`` this is the ×Net / BTS head ``sigmoid(conv) * max_depth``.

    Args:
        in_channels: channels of the decoder output.
        max_depth: largest predictable depth in metres (10 for NYU, 80 for KITTI).
        min_depth: smallest predictable depth in metres, ``0 <= min_depth < max_depth``.
        convs: number of Conv3×3-BN-ReLU blocks before the final conv (``blocks``; 0: none, no ``blocks`` module).
        channels: width of the blocks (None: ``in_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        max_depth: float = 10.0,
        min_depth: float = 0.0,
        convs: int = 0,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= min_depth < max_depth:
            raise ValueError(f"Depth head needs 0 <= min_depth < max_depth, got {min_depth=}, {max_depth=}.")
        self.max_depth = float(max_depth)
        self.min_depth = float(min_depth)
        blocks, width = _blocks(in_channels, convs, channels)
        self.convs = convs
        if blocks is not None:
            self.blocks = blocks
        self.conv = nn.Conv2d(width, 1, kernel_size=3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Args:
            x: decoder output (B, in_channels, h, w).
            size: output (H, W); the pre-sigmoid map is resized bilinearly to it. None keeps (h, w) (for decoders
                whose output is already at full resolution).

        Returns:
            Depth in metres (B, 1, H, W).
        """
        if self.convs:
            x = self.blocks(x)
        logits = _resize(self.conv(x), size)
        return torch.sigmoid(logits) * (self.max_depth - self.min_depth) + self.min_depth

    def extra_repr(self) -> str:
        return f"min_depth={self.min_depth}, max_depth={self.max_depth}"


class SegmentationHead(nn.Module):
    """Per-pixel class logits: ``conv1x1(blocks(x))``.

    Args:
        in_channels: channels of the decoder output.
        num_classes: number of classes (the ignore label, 255, is not a class).
        convs: number of Conv3×3-BN-ReLU blocks before the final conv (``blocks``; 0: none, no ``blocks`` module).
        channels: width of the blocks (None: ``in_channels``).
    """

    def __init__(self, in_channels: int, *, num_classes: int, convs: int = 0, channels: int | None = None) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"Segmentation head needs num_classes >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        blocks, width = _blocks(in_channels, convs, channels)
        self.convs = convs
        if blocks is not None:
            self.blocks = blocks
        self.conv = nn.Conv2d(width, self.num_classes, kernel_size=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Args:
            x: decoder output (B, in_channels, h, w).
            size: output (H, W); the logits are resized bilinearly to it. None keeps (h, w).

        Returns:
            Logits (B, num_classes, H, W).
        """
        if self.convs:
            x = self.blocks(x)
        return _resize(self.conv(x), size)


def build_head(
    task: str,
    in_channels: int,
    *,
    num_classes: int | None = None,
    max_depth: float = 10.0,
    min_depth: float = 0.0,
    convs: int = 0,
    channels: int | None = None,
) -> DepthHead | SegmentationHead:
    """Build the head of ``task``.

    Args:
        task: ``"depth"`` or ``"segmentation"``.
        in_channels: channels of the decoder output.
        num_classes: number of classes (segmentation only, required there).
        max_depth: largest depth in metres (depth only).
        min_depth: smallest depth in metres (depth only).
        convs: number of Conv3×3-BN-ReLU blocks before the final conv.
        channels: width of the blocks (None: ``in_channels``).
    """
    if task == "depth":
        return DepthHead(in_channels, max_depth=max_depth, min_depth=min_depth, convs=convs, channels=channels)
    if task == "segmentation":
        if num_classes is None:
            raise ValueError("task='segmentation' needs num_classes (the number of classes, e.g. 21 for VOC).")
        return SegmentationHead(in_channels, num_classes=num_classes, convs=convs, channels=channels)
    raise ValueError(f"Unknown task {task!r}; valid tasks: {', '.join(TASKS)}.")

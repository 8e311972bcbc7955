"""FCN head with mmsegmentation's ``FCNHead`` layout and parameter names (``convs.{i}.conv/bn``, ``conv_cat``).

The classifier (mmseg's ``conv_seg``) is not part of the decoder: the dense model's head plays that role.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from predec.models.decoders.base import Decoder, DecoderOutput, register_decoder


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` with BatchNorm and ReLU: ``.conv`` (no bias) → ``.bn`` → ``.activate``.

    Initialised as mmcv does: Kaiming-normal conv (fan_out, ReLU), BN weight 1 and bias 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """conv → bn → ReLU."""
        return self.activate(self.bn(self.conv(x)))


@register_decoder("fcn")
class FCN(Decoder):
    """FCN head (Long et al. 2015) as mmseg's ``FCNHead`` on the deepest encoder map (C5).

    ``num_convs`` Conv-BN-ReLU blocks (``convs.0``, ``convs.1``, ...), the first with ``dilation``; with
    ``concat_input`` their output is concatenated with C5 and fused by ``conv_cat`` (as mmseg). One level,
    ``"out"``, which is also the default level (DeCon-SL's FCN output).

    Args:
        in_channels: encoder channels; only the last (deepest) is used.
        in_reductions: encoder strides; ``out_reduction`` is the last one.
        channels: width of the convs (DeCon/SlotCon: 256 for VOC and Cityscapes, 512 for ADE20K).
        num_convs: number of Conv-BN-ReLU blocks (mmseg and DeCon: 2).
        kernel_size: kernel size of the convs.
        dilation: dilation of the convs (mmseg default 1, as for ADE20K; 6 in DeCon's VOC/Cityscapes recipes).
        concat_input: concatenate C5 with the conv output and fuse (mmseg option; default False, as DeCon).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_reductions: Sequence[int],
        *,
        channels: int = 256,
        num_convs: int = 2,
        kernel_size: int = 3,
        dilation: int = 1,
        concat_input: bool = False,
    ) -> None:
        super().__init__(in_channels, in_reductions)
        if num_convs < 1:
            raise ValueError(f"FCN needs num_convs >= 1, got {num_convs}.")
        if dilation < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"FCN needs an odd kernel_size >= 1 and dilation >= 1, got {kernel_size}, {dilation}.")
        c5 = self.in_channels[-1]
        padding = (kernel_size // 2) * dilation
        self.convs = nn.Sequential(
            *[
                ConvModule(c5 if i == 0 else channels, channels, kernel_size, padding=padding, dilation=dilation)
                for i in range(num_convs)
            ]
        )
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvModule(c5 + channels, channels, kernel_size, padding=kernel_size // 2)
        self.out_channels = channels
        self.out_reduction = self.in_reductions[-1]
        self.level_channels = {"out": channels}
        self.level_reductions = {"out": self.out_reduction}
        self.default_level = "out"

    def forward(self, features: list[Tensor], image: Tensor | None = None) -> DecoderOutput:
        """Args:
            features: encoder maps; only ``features[-1]`` is read.
            image: unused.

        Returns:
            ``out`` (B, channels, H / in_reductions[-1], W / in_reductions[-1]), also as level ``"out"``.
        """
        self.check_features(features)
        x = features[-1]
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return DecoderOutput(out=out, levels={"out": out})

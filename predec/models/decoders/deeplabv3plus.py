"""DeepLabV3+ decoder: torchvision's ASPP on the deepest map, fused with a projected stride-4 map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops.misc import Conv2dNormActivation

from predec.models.decoders.base import Decoder, DecoderOutput, register_decoder

# Output stride at which DeepLab's atrous rates (12, 24, 36) are defined (Chen et al. 2018: OS 8; (6, 12, 18) at 16).
RATES_OUTPUT_STRIDE = 8


def scale_atrous_rates(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """Atrous rates defined at output stride 8, rescaled to ``output_stride`` (at least 1): (12, 24, 36) at 16 →
    (6, 12, 18), at 32 → (3, 6, 9)."""
    return tuple(max(1, round(r * RATES_OUTPUT_STRIDE / output_stride)) for r in rates)


@register_decoder("deeplabv3plus")
class DeepLabV3Plus(Decoder):
    """DeepLabV3+ decoder (Chen et al. 2018).

    ``aspp`` (torchvision's ASPP: 1×1 + three atrous 3×3 + image pooling branches, 1×1 projection, dropout 0.5) on
    the deepest map; ``low_level``: 1×1 Conv-BN-ReLU of the shallowest map (stride 4) to 48 channels; ``fuse``: two
    3×3 Conv-BN-ReLU on [bilinear-upsampled ASPP, low-level]. Levels ``"aspp"`` (deepest stride) and ``"out"``
    (shallowest stride, default level).

    Note: the ASPP pooling branch normalises a 1×1 map, so training needs a batch of at least 2 (as in torchvision).

    Args:
        in_channels: encoder channels; the first (low-level) and last (ASPP input) are used.
        in_reductions: encoder strides.
        channels: ASPP and fusion width (256 in the paper).
        atrous_rates: ASPP rates at output stride 8, rescaled to the encoder's deepest stride.
        low_level_channels: width of the low-level projection (48 in the paper).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_reductions: Sequence[int],
        *,
        channels: int = 256,
        atrous_rates: Sequence[int] = (12, 24, 36),
        low_level_channels: int = 48,
    ) -> None:
        super().__init__(in_channels, in_reductions)
        if len(self.in_channels) < 2:
            raise ValueError(
                f"DeepLabV3Plus needs a low-level and a deep encoder map, got strides {self.in_reductions}."
            )
        self.atrous_rates = scale_atrous_rates(atrous_rates, self.in_reductions[-1])
        self.aspp = ASPP(self.in_channels[-1], list(self.atrous_rates), out_channels=channels)
        self.low_level = Conv2dNormActivation(self.in_channels[0], low_level_channels, kernel_size=1)
        self.fuse = nn.Sequential(
            Conv2dNormActivation(channels + low_level_channels, channels, kernel_size=3),
            Conv2dNormActivation(channels, channels, kernel_size=3),
        )
        self.out_channels = channels
        self.out_reduction = self.in_reductions[0]
        self.level_channels = {"aspp": channels, "out": channels}
        self.level_reductions = {"aspp": self.in_reductions[-1], "out": self.out_reduction}
        self.default_level = "out"

    def forward(self, features: list[Tensor], image: Tensor | None = None) -> DecoderOutput:
        """Args:
            features: encoder maps; the first and the last are read.
            image: unused.

        Returns:
            ``out`` (B, channels, H / in_reductions[0], W / in_reductions[0]) and levels ``"aspp"``, ``"out"``.
        """
        self.check_features(features)
        aspp = self.aspp(features[-1])
        low = self.low_level(features[0])
        up = F.interpolate(aspp, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.fuse(torch.cat([up, low], dim=1))
        return DecoderOutput(out=out, levels={"aspp": aspp, "out": out})

"""U-Net decoder in the style of segmentation_models_pytorch (smp): upsample ×2, concatenate the skip, two
Conv3×3-BN-ReLU; blocks beyond the shallowest skip keep upsampling ×2 without a skip (to full resolution)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from predec.models.decoders.base import Decoder, DecoderOutput, register_decoder, stage_index


class UNetBlock(nn.Module):
    """Nearest upsampling (to the skip's size, or ×2 without a skip), concatenation, two Conv3×3-BN-ReLU.

    Submodule names follow smp's ``DecoderBlock`` (``conv1``, ``conv2``, each conv ``.0`` / BN ``.1``).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv2dNormActivation(in_channels + skip_channels, out_channels, kernel_size=3)
        self.conv2 = Conv2dNormActivation(out_channels, out_channels, kernel_size=3)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """Args:
            x: (B, in_channels, h, w).
            skip: (B, skip_channels, h', w') or ``None`` (then h' = 2h, w' = 2w).

        Returns:
            (B, out_channels, h', w').
        """
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1)
        return self.conv2(self.conv1(x))


@register_decoder("unet")
class UNet(Decoder):
    """U-Net decoder (Ronneberger et al. 2015) as smp's ``UnetDecoder`` (no centre block, no attention).

    Block ``i`` upsamples to the next shallower encoder map and concatenates it; with the default five
    ``decoder_channels`` and encoder strides 4..32, three blocks use skips (strides 16, 8, 4) and two more reach
    strides 2 and 1 without skips, as smp does for encoders without stride-2/1 features. Levels: each block's
    output, named ``u{log2 stride}`` (``u4``, ``u3``, ``u2``, ``u1``, ``u0``); default level the block at the
    shallowest encoder stride (``u2``, stride 4, like FPN's P2).

    Args:
        in_channels: encoder channels.
        in_reductions: encoder strides (powers of two).
        decoder_channels: output channels of each block (smp default (256, 128, 64, 32, 16)); at least one block
            per skip (``len(in_channels) - 1``); extra blocks halve the stride each, down to 1.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_reductions: Sequence[int],
        *,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__(in_channels, in_reductions)
        decoder_channels = [int(c) for c in decoder_channels]
        num_skips = len(self.in_channels) - 1
        num_extra = len(decoder_channels) - num_skips
        if not decoder_channels or num_extra < 0 or self.in_reductions[0] % 2**num_extra != 0:
            raise ValueError(
                f"UNet decoder_channels {decoder_channels} needs between {max(num_skips, 1)} blocks (one per skip, "
                f"at least one) and "
                f"{num_skips + stage_index(self.in_reductions[0])} blocks (down to stride 1) for encoder strides "
                f"{self.in_reductions}."
            )
        skip_channels = self.in_channels[-2::-1] + [0] * num_extra
        strides = self.in_reductions[-2::-1] + [self.in_reductions[0] // 2 ** (i + 1) for i in range(num_extra)]
        block_in = [self.in_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            [UNetBlock(c_in, c_skip, c_out) for c_in, c_skip, c_out in zip(block_in, skip_channels, decoder_channels)]
        )
        self.level_names = [f"u{stage_index(s)}" for s in strides]
        self.level_channels = dict(zip(self.level_names, decoder_channels))
        self.level_reductions = dict(zip(self.level_names, strides))
        self.default_level = f"u{stage_index(self.in_reductions[0])}"
        self.out_channels = decoder_channels[-1]
        self.out_reduction = strides[-1]

    def forward(self, features: list[Tensor], image: Tensor | None = None) -> DecoderOutput:
        """Args:
            features: encoder maps at ``in_reductions``.
            image: unused.

        Returns:
            ``out`` = the last block's output (B, decoder_channels[-1], H / out_reduction, W / out_reduction) and
            every block's output as a level.
        """
        self.check_features(features)
        skips = features[-2::-1]
        x = features[-1]
        levels = {}
        for i, (name, block) in enumerate(zip(self.level_names, self.blocks)):
            x = block(x, skips[i] if i < len(skips) else None)
            levels[name] = x
        return DecoderOutput(out=x, levels=levels)

"""×Net's decoder: a pre-trained timm classification backbone used as the decoder (Ning et al., ICRA 2026).

Data flow (the paper's overview figure): encoder H/32 map → ``input_reshape`` to H×W → mixed with the image
(default: element-wise product) → ``backbone`` (a timm classification model, stem + stages, classifier dropped)
→ its H/4..H/32 pyramid → ``pfp`` (Post Feature Pyramid: Re-Shape H/8, H/16, H/32 to H/4, concatenate with H/4)
→ ``output_reshape`` to H×W. No encoder→decoder skip connections: only the deepest encoder map is read.

The paper leaves the Re-Shape internals, the channel widths and the mixing operator unspecified; they are the
constructor options below, with the chosen defaults explained in ``docs/xnet.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from predec.models.decoders.base import Decoder, DecoderOutput, checks_enabled, register_decoder, stage_index
from predec.models.encoders import TimmBackbone

RESHAPE_MODES = ("pixelshuffle", "bilinear", "deconv")
DEFAULT_RESHAPE = "bilinear"
LEGACY_RESHAPE = "pixelshuffle"
"""The Re-Shape of ×Net models saved before the mode was recorded in their config (the default until then)."""
MIXING_MODES = ("mul", "add", "concat")


class ReShape(nn.Module):
    """The Re-Shape module: a learned linear map that changes channels and upsamples by ``scale``.

    Modes (all linear; ``proj`` is the only learned layer):

    - ``"pixelshuffle"``: 1×1 conv to ``out_channels·scale²`` + ``PixelShuffle(scale)`` (depth-to-space).
    - ``"bilinear"``: 1×1 conv to ``out_channels`` + bilinear upsampling ×scale.
    - ``"deconv"``: transposed conv, kernel ``2·scale``, stride ``scale``, padding ``scale/2`` (overlapping
      kernels; with kernel = stride it would equal ``"pixelshuffle"``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        scale: upsampling factor (1 or a multiple of 2 for ``"deconv"``).
        mode: one of ``RESHAPE_MODES``.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, mode: str = "pixelshuffle") -> None:
        super().__init__()
        if mode not in RESHAPE_MODES:
            raise ValueError(f"Unknown Re-Shape mode {mode!r}; use one of {RESHAPE_MODES}.")
        if scale < 1:
            raise ValueError(f"Re-Shape scale must be >= 1, got {scale}.")
        if mode == "deconv" and scale > 1 and scale % 2:
            raise ValueError(f"Re-Shape mode 'deconv' needs an even scale (or 1), got {scale}.")
        self.mode = mode
        self.scale = int(scale)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        if mode == "pixelshuffle":
            self.proj = nn.Conv2d(in_channels, out_channels * scale**2, kernel_size=1)
            self.shuffle = nn.PixelShuffle(scale)
        elif mode == "bilinear" or scale == 1:
            self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.proj = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size=2 * scale, stride=scale, padding=scale // 2
            )

    def init_constant(self, value: float, noise_std: float = 0.01) -> None:
        """Make the output ≈ ``value`` everywhere: bias ``value``, weights N(0, noise_std² / in_channels), so the
        output deviates from ``value`` by about ``noise_std`` × the input's RMS (exactly ``value`` for 0).

        Small non-zero weights (rather than zeros) let gradients reach the input from the first step.
        """
        nn.init.normal_(self.proj.weight, std=noise_std / self.in_channels**0.5)
        nn.init.constant_(self.proj.bias, value)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: (B, in_channels, h, w).

        Returns:
            (B, out_channels, h·scale, w·scale).
        """
        x = self.proj(x)
        if self.mode == "pixelshuffle":
            return self.shuffle(x)
        if self.mode == "bilinear" and self.scale > 1:
            return F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)
        return x


def mix(image: Tensor, guide: Tensor, mode: str) -> Tensor:
    """Mix the image with the re-shaped encoder map (the decoder backbone's input).

    Args:
        image: (B, C, H, W) model input.
        guide: (B, K, H, W) re-shaped encoder map; K = C or 1 (broadcast) for ``"mul"`` and ``"add"``.
        mode: ``"mul"`` (image ⊗ guide, the paper's figure), ``"add"`` or ``"concat"`` (channels C + K).

    Returns:
        (B, C, H, W) for ``"mul"``/``"add"``, (B, C + K, H, W) for ``"concat"``.
    """
    if mode == "mul":
        return image * guide
    if mode == "add":
        return image + guide
    if mode == "concat":
        return torch.cat([image, guide], dim=1)
    raise ValueError(f"Unknown mixing {mode!r}; use one of {MIXING_MODES}.")


class PostFeaturePyramid(nn.Module):
    """Post Feature Pyramid: every map but the first is re-shaped to the first map's stride, then all are
    concatenated (first map unchanged, first in the concatenation).

    Args:
        in_channels: channels of the pyramid maps, shallowest first.
        in_reductions: their strides (each a multiple of the first).
        channels: output channels of each Re-Shape.
        reshape: Re-Shape mode.

    Attributes:
        out_channels: ``in_channels[0] + channels · (len(in_channels) - 1)``.
    """

    def __init__(self, in_channels: Sequence[int], in_reductions: Sequence[int], channels: int, reshape: str) -> None:
        super().__init__()
        base = in_reductions[0]
        if any(r % base for r in in_reductions):
            raise ValueError(f"Post Feature Pyramid strides {list(in_reductions)} must be multiples of {base}.")
        self.reshapes = nn.ModuleList(
            [ReShape(c, channels, r // base, reshape) for c, r in zip(in_channels[1:], in_reductions[1:])]
        )
        self.out_channels = int(in_channels[0]) + channels * (len(in_channels) - 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Args:
            features: maps (B, in_channels[i], H / in_reductions[i], W / in_reductions[i]).

        Returns:
            (B, out_channels, H / in_reductions[0], W / in_reductions[0]).
        """
        return torch.cat([features[0], *[rs(f) for rs, f in zip(self.reshapes, features[1:])]], dim=1)


def pad_input_conv_weight(weight: Tensor, in_chans: int) -> Tensor:
    """Widen a stem conv weight (O, C, kh, kw) to ``in_chans`` inputs: the first C keep their filters exactly,
    the new ones are zero (so the extra input channels start with no effect)."""
    extra = in_chans - weight.shape[1]
    if extra < 0:
        raise ValueError(f"Cannot narrow a stem conv weight of {weight.shape[1]} input channels to {in_chans}.")
    return torch.cat([weight, weight.new_zeros(weight.shape[0], extra, *weight.shape[2:])], dim=1)


def _widen_stem_on_load(
    module: nn.Module, state_dict: dict, prefix: str, *args, conv_names: Sequence[str], image_chans: int
) -> None:
    """``load_state_dict`` pre-hook: a stem weight with ``image_chans`` inputs is zero-padded to the module's."""
    for name in conv_names:
        key = f"{prefix}{name}.weight"
        weight = state_dict.get(key)
        target = module.get_submodule(name).weight
        if weight is not None and weight.ndim == 4 and weight.shape[1] == image_chans < target.shape[1]:
            state_dict[key] = pad_input_conv_weight(weight, target.shape[1])


def _stem_conv_names(model: nn.Module) -> list[str]:
    """Names of the model's input convs: timm's ``pretrained_cfg['first_conv']``, else the first Conv2d."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    names = [first] if isinstance(first, str) else list(first or [])
    names = [n for n in names if isinstance(getattr(_get(model, n), "weight", None), Tensor)]
    if names:
        return names
    return [next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))]


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


@register_decoder("xnet")
class XNetDecoder(Decoder):
    """×Net decoder: a pre-trained classification backbone run on the image mixed with the encoder's deepest map.

    Only ``features[-1]`` is read (no skips). The ``image`` is the model input as given to the encoder, i.e.
    already normalised (ImageNet mean/std): the decoder backbone sees the same normalised image it was
    pre-trained on, multiplied (at init: by exactly 1) by the re-shaped encoder map.

    Levels (for DeCon pre-training of the decoder, beyond the paper): the decoder backbone pyramid
    ``d2``..``d5`` (strides 4..32, the backbone's channels) and ``fused``, the Post-Feature-Pyramid concatenation
    at stride 4 (default level). ``out`` is at stride 1 (``out_reduction`` 1); the task head follows.

    Args:
        in_channels: encoder channels; only the last is used.
        in_reductions: encoder strides; the last is the first Re-Shape's upsampling factor.
        backbone: timm classification model name of the decoder (``self.backbone.model`` keeps timm's keys).
        in_chans: channels of the model input image.
        reshape: Re-Shape mode of every Re-Shape, see ``ReShape`` (default ``"bilinear"``: one 1×1 conv shared by
            every output pixel; pixel shuffle gives each position of an r×r block its own weights, which learn from
            1/r² of the pixels: ``docs/xnet.md`` has the measured difference).
        mixing: ``"mul"`` (default, the figure's ⊗), ``"add"`` or ``"concat"`` (the backbone gets
            ``in_chans + mix_channels`` inputs; 3-channel stem weights loaded later keep their filters on the
            image channels and get zero filters on the extra ones).
        mix_channels: output channels of the first Re-Shape (default ``in_chans``, so the stem receives an
            image-like input and its pre-trained weights stay meaningful; 1 broadcasts one gate over all channels).
        pfp_channels: output channels of each Post-Feature-Pyramid Re-Shape (default: the backbone's H/4 channels,
            so each level contributes as much as the H/4 map and the width scales with the backbone).
        out_channels: channels of ``out`` (default 32: full-resolution maps dominate memory; the head only needs
            a per-pixel feature).
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_reductions: Sequence[int],
        *,
        backbone: str,
        in_chans: int = 3,
        reshape: str = DEFAULT_RESHAPE,
        mixing: str = "mul",
        mix_channels: int | None = None,
        pfp_channels: int | None = None,
        out_channels: int = 32,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__(in_channels, in_reductions)
        if mixing not in MIXING_MODES:
            raise ValueError(f"Unknown mixing {mixing!r}; use one of {MIXING_MODES}.")
        if reshape not in RESHAPE_MODES:
            raise ValueError(f"Unknown Re-Shape mode {reshape!r}; use one of {RESHAPE_MODES}.")
        mix_channels = in_chans if mix_channels is None else int(mix_channels)
        if mixing != "concat" and mix_channels not in (1, in_chans):
            raise ValueError(
                f"mixing={mixing!r} combines the image ({in_chans} channels) element-wise with the re-shaped encoder "
                f"map, so mix_channels must be {in_chans} or 1, got {mix_channels}."
            )
        self.in_chans = int(in_chans)
        self.reshape = reshape
        self.mixing = mixing
        self.mix_channels = mix_channels
        self.input_reshape = ReShape(self.in_channels[-1], mix_channels, self.in_reductions[-1], reshape)
        if mixing == "mul":
            self.input_reshape.init_constant(1.0)  # decoder input ≈ image at init: its pre-training is not wasted
        elif mixing == "add":
            self.input_reshape.init_constant(0.0)
        backbone_chans = in_chans + (mix_channels if mixing == "concat" else 0)
        self.backbone = TimmBackbone(backbone, in_chans=backbone_chans, **(backbone_kwargs or {}))
        if mixing == "concat":
            hook = functools.partial(
                _widen_stem_on_load, conv_names=_stem_conv_names(self.backbone.model), image_chans=in_chans
            )
            self.backbone.model.register_load_state_dict_pre_hook(hook)
        pfp_channels = self.backbone.channels[0] if pfp_channels is None else int(pfp_channels)
        self.pfp = PostFeaturePyramid(self.backbone.channels, self.backbone.reductions, pfp_channels, reshape)
        self.output_reshape = ReShape(self.pfp.out_channels, out_channels, self.backbone.reductions[0], reshape)
        names = [f"d{stage_index(r)}" for r in self.backbone.reductions]
        self.level_channels = {**dict(zip(names, self.backbone.channels)), "fused": self.pfp.out_channels}
        self.level_reductions = {**dict(zip(names, self.backbone.reductions)), "fused": self.backbone.reductions[0]}
        self.default_level = "fused"
        self.out_channels = int(out_channels)
        self.out_reduction = 1

    @property
    def input_divisor(self) -> int:
        """Input height and width must be divisible by the encoder's and the decoder backbone's strides."""
        return math.lcm(self.in_reductions[-1], self.backbone.output_stride)

    def mixed_input(self, deepest: Tensor, image: Tensor) -> Tensor:
        """The decoder backbone's input.

        Args:
            deepest: encoder map (B, in_channels[-1], H / in_reductions[-1], W / in_reductions[-1]).
            image: model input (B, in_chans, H, W).

        Returns:
            (B, in_chans, H, W), or (B, in_chans + mix_channels, H, W) for ``mixing="concat"``.
        """
        guide = self.input_reshape(deepest)
        if checks_enabled() and (image.shape[1] != self.in_chans or image.shape[-2:] != guide.shape[-2:]):
            raise ValueError(
                f"XNetDecoder expects an image (B, {self.in_chans}, H, W) with H, W = {self.in_reductions[-1]} × the "
                f"deepest encoder map {tuple(deepest.shape[-2:])}, i.e. {tuple(guide.shape[-2:])}; "
                f"got {tuple(image.shape)}."
            )
        return mix(image, guide, self.mixing)

    def forward(self, features: list[Tensor], image: Tensor) -> DecoderOutput:
        """Args:
            features: encoder maps; only ``features[-1]`` is read.
            image: the (normalised) model input (B, in_chans, H, W).

        Returns:
            ``out`` (B, out_channels, H, W) and levels ``d2``..``d5``, ``fused``.
        """
        self.check_features(features)
        pyramid = self.backbone(self.mixed_input(features[-1], image))
        fused = self.pfp(pyramid)
        levels = {name: f for name, f in zip(self.level_channels, pyramid)}
        levels["fused"] = fused
        return DecoderOutput(out=self.output_reshape(fused), levels=levels)

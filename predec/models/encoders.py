"""The timm bridge: any timm classification backbone as a multi-scale feature extractor.

The wrapped model keeps timm's own parameter names (``model.<timm key>``), so a timm classification
state dict loads into it directly (minus the classifier) and can be exported back unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_REDUCTIONS: tuple[int, ...] = (4, 8, 16, 32)


def check_backbone_name(name: str) -> None:
    """Raise a ``ValueError`` listing close matches if ``name`` is not a timm model.

    Args:
        name: timm model name, optionally with a pretrained tag (``convnext_atto.d2_in1k``).
    """
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ValueError(f"Unknown backbone {name!r}: not a timm model name.{hint} See timm.list_models().")


def _create_timm(name: str, in_chans: int, **kwargs) -> nn.Module:
    """Create a timm model without classifier, allowing dense (arbitrary) input sizes where supported."""
    base = dict(pretrained=False, in_chans=in_chans, **{"num_classes": 0, **kwargs})
    # Transformers with a fixed grid (ViT, Swin) accept any input size with these flags; CNNs reject them.
    for extra in (dict(dynamic_img_size=True, strict_img_size=False), dict(dynamic_img_size=True), {}):
        try:
            return timm.create_model(name, **base, **extra)
        except TypeError as err:
            if "unexpected keyword" not in str(err):
                raise
            if not extra:  # an option of the user's (encoder_kwargs) that this timm model does not take
                raise ValueError(
                    f"timm model {name!r} does not accept the options {sorted(kwargs)} (encoder_kwargs / "
                    f"backbone_kwargs): {err}. See the model's constructor in timm for its options."
                ) from None
    raise AssertionError("unreachable")


class TimmBackbone(nn.Module):
    """A timm classification model returning NCHW feature maps at the requested strides.

    Channels and strides come from the model's ``feature_info``. Hierarchical models (ResNet, ConvNeXt,
    Swin, EfficientNet, ...) return the last feature of each requested stride. Single-scale models (ViT)
    take ``len(reductions)`` evenly spaced blocks and resample them bilinearly to the requested strides
    (parameter-free, as in ViTDet's simple pyramid without its learned layers).

    Attributes:
        name: timm model name.
        in_chans: input channels.
        timm_kwargs: extra keyword arguments given to ``timm.create_model``.
        channels: channels of each output map.
        reductions: stride of each output map with respect to the input.
        model: the timm model (parameter names as in timm, classifier removed).
    """

    def __init__(
        self,
        name: str,
        *,
        in_chans: int = 3,
        reductions: Sequence[int] = DEFAULT_REDUCTIONS,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        check_backbone_name(name)
        self.name = name
        self.in_chans = int(in_chans)
        self.timm_kwargs = dict(timm_kwargs)
        self.model = _create_timm(name.split(".", 1)[0], in_chans, **timm_kwargs)
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(f"timm model {name!r} has no forward_intermediates(); it cannot be a backbone.")
        info = list(self.model.feature_info)
        available = sorted({int(f["reduction"]) for f in info})
        self.reductions = [int(r) for r in reductions]
        self.single_scale = len(available) == 1
        if self.single_scale:
            depth = len(info)
            n = len(self.reductions)
            self._indices = [round((i + 1) * depth / n) - 1 for i in range(n)]
            self._native = available[0]
        else:
            missing = [r for r in self.reductions if r not in available]
            if missing:
                raise ValueError(
                    f"Backbone {name!r} has no feature map at stride(s) {missing}; "
                    f"its feature_info offers strides {available}."
                )
            self._indices = [max(i for i, f in enumerate(info) if f["reduction"] == r) for r in self.reductions]
            self._native = None
        self.channels = [int(info[i]["num_chs"]) for i in self._indices]
        self.model.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)

    @property
    def output_stride(self) -> int:
        """Largest stride among the outputs (inputs must be divisible by it)."""
        return max(self.reductions)

    @property
    def pretrained_cfg(self) -> dict:
        """timm's pretrained config of the model (mean/std, input size, ...)."""
        return dict(getattr(self.model, "pretrained_cfg", {}) or {})

    @property
    def first_conv_keys(self) -> list[str]:
        """timm keys of the input convolution weight(s) (``conv1.weight``), adapted when ``in_chans != 3``."""
        first_conv = self.pretrained_cfg.get("first_conv") or ()
        names = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)
        return [f"{n}.weight" for n in names]

    def pruned_keys(self) -> set[str]:
        """timm keys of the full classification model that this backbone lacks: classifier, final norm, and
        stages after the last output. A timm classification state dict has them; loading ignores them.
        """
        with torch.device("meta"):
            full = _create_timm(self.name.split(".", 1)[0], self.in_chans, **{**self.timm_kwargs, "num_classes": 1000})
        return set(full.state_dict()) - set(self.model.state_dict())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args:
            x: images (B, C, H, W), H and W divisible by ``output_stride``.

        Returns:
            One map (B, channels[i], H / reductions[i], W / reductions[i]) per requested stride.
        """
        feats = self.model.forward_intermediates(x, indices=self._indices, intermediates_only=True)
        if not self.single_scale:
            return list(feats)
        h, w = x.shape[-2:]
        return [
            F.interpolate(f, size=(h // r, w // r), mode="bilinear", align_corners=False)
            if f.shape[-2:] != (h // r, w // r)
            else f
            for f, r in zip(feats, self.reductions)
        ]

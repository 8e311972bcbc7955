"""Decoders: ×Net, FPN, FCN, U-Net, DeepLabV3+, and ``build_decoder`` to create one by name.

Every decoder takes the encoder's ``channels`` and ``reductions`` and is called as
``decoder(features, image) -> DecoderOutput`` (see :mod:`predec.models.decoders.base`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence

from predec.config import check_options
from predec.models.decoders.base import DECODERS, Decoder, DecoderOutput, register_decoder
from predec.models.decoders.deeplabv3plus import DeepLabV3Plus
from predec.models.decoders.fcn import FCN
from predec.models.decoders.fpn import FPN
from predec.models.decoders.unet import UNet
from predec.models.decoders.xnet import XNetDecoder

__all__ = [
    "DECODERS",
    "FCN",
    "FPN",
    "Decoder",
    "DecoderOutput",
    "DeepLabV3Plus",
    "UNet",
    "XNetDecoder",
    "build_decoder",
    "decoder_options",
    "register_decoder",
]


def decoder_options(arch: str) -> list[str]:
    """Keyword options of decoder ``arch`` (beyond ``in_channels`` and ``in_reductions``)."""
    params = inspect.signature(_decoder_class(arch).__init__).parameters
    return [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _decoder_class(arch: str) -> type[Decoder]:
    if arch in DECODERS:
        return DECODERS[arch]
    close = difflib.get_close_matches(str(arch), DECODERS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"Unknown decoder architecture {arch!r}; valid: {', '.join(sorted(DECODERS))}.{hint}")


def build_decoder(arch: str, in_channels: Sequence[int], in_reductions: Sequence[int], **kwargs) -> Decoder:
    """Create a decoder by architecture name.

    Args:
        arch: a key of ``DECODERS`` (``"xnet"``, ``"fpn"``, ``"fcn"``, ``"unet"``, ``"deeplabv3plus"``).
        in_channels: the encoder's channels (``TimmBackbone.channels``).
        in_reductions: the encoder's strides (``TimmBackbone.reductions``).
        **kwargs: options of that decoder (``decoder_options(arch)`` lists them).

    Returns:
        The decoder module.

    Raises:
        ValueError: an unknown architecture (the closest named); ``ConfigError``: an option the decoder does not take
            (named as ``model.decoder_kwargs.<option>``, with the closest valid one).
    """
    cls = _decoder_class(arch)
    check_options(cls, kwargs, "model.decoder_kwargs", fixed=("in_channels", "in_reductions"))
    return cls(in_channels, in_reductions, **kwargs)

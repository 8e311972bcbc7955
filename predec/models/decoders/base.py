"""The decoder contract: ``Decoder`` base class, ``DecoderOutput`` and the registry of decoder classes.

A decoder turns the encoder's feature pyramid into one dense map (``out``) and exposes its named pyramid
levels so that a pre-training loss (DeCon) can attach to them. Level names end with log2 of their stride where
they form a pyramid (detectron2's ``p2`` = stride 4); single maps have plain names (``"out"``, ``"aspp"``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# Architecture name -> decoder class; filled by ``register_decoder`` when the decoder modules are imported.
DECODERS: dict[str, type[Decoder]] = {}


def register_decoder(name: str) -> Callable[[type[Decoder]], type[Decoder]]:
    """Class decorator adding a decoder class to ``DECODERS`` under ``name``.

    Args:
        name: architecture name (``"fpn"``), unique among decoders.
    """

    def add(cls: type[Decoder]) -> type[Decoder]:
        if name in DECODERS and DECODERS[name] is not cls:
            raise ValueError(f"Decoder name {name!r} is already registered by {DECODERS[name].__qualname__}.")
        DECODERS[name] = cls
        return cls

    return add


@dataclass
class DecoderOutput:
    """What every decoder returns.

    Attributes:
        out: the dense output (B, out_channels, H / out_reduction, W / out_reduction).
        levels: named maps a pre-training loss can attach to, each (B, level_channels[name],
            H / level_reductions[name], W / level_reductions[name]).
    """

    out: Tensor
    levels: dict[str, Tensor]


def checks_enabled() -> bool:
    """Whether eager-mode input checks should run (skipped while compiling, exporting to ONNX or tracing: they would
    add guards or graph nodes)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


class Decoder(nn.Module):
    """Base class of all decoders.

    Subclasses set the attributes below in ``__init__`` and implement ``forward``.

    Attributes:
        in_channels: channels of each encoder map the decoder expects.
        in_reductions: stride of each encoder map with respect to the input image.
        out_channels: channels of ``DecoderOutput.out``.
        out_reduction: stride of ``DecoderOutput.out``.
        level_channels: channels of each named level.
        level_reductions: stride of each named level.
        default_level: the level a single-level pre-training loss (DeCon-SL) attaches to.
        head_defaults: class attribute, the task head options (``convs``, ``channels``; see
            :mod:`predec.models.heads`) a model with this decoder gets unless ``head_kwargs`` says otherwise. Empty
            (the default): the head is its final convolution alone. A decoder whose output is a linear function of
            the encoder's features declares hidden head blocks here (FPN).
    """

    head_defaults: ClassVar[dict[str, Any]] = {}
    out_channels: int
    out_reduction: int
    level_channels: dict[str, int]
    level_reductions: dict[str, int]
    default_level: str

    def __init__(self, in_channels: Sequence[int], in_reductions: Sequence[int]) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        in_reductions = [int(r) for r in in_reductions]
        if not in_channels or len(in_channels) != len(in_reductions):
            raise ValueError(
                f"{type(self).__name__}: in_channels {in_channels} and in_reductions {in_reductions} must be "
                "non-empty and of equal length (one entry per encoder map)."
            )
        if any(c <= 0 for c in in_channels) or any(r <= 0 for r in in_reductions):
            raise ValueError(f"{type(self).__name__}: channels {in_channels} and strides {in_reductions} must be > 0.")
        if any(b <= a for a, b in itertools.pairwise(in_reductions)):
            raise ValueError(
                f"{type(self).__name__}: in_reductions {in_reductions} must be strictly increasing (shallow to deep)."
            )
        self.in_channels = in_channels
        self.in_reductions = in_reductions

    @property
    def input_divisor(self) -> int:
        """Input height and width must be divisible by this number."""
        return max(self.in_reductions)

    def check_features(self, features: Sequence[Tensor]) -> None:
        """Raise a ``ValueError`` if ``features`` do not match ``in_channels`` (count and channels)."""
        got = [int(f.shape[1]) for f in features]
        if got != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for encoder maps with channels {self.in_channels} at strides "
                f"{self.in_reductions}, got {len(got)} maps with channels {got}. Build it with the encoder's "
                "`channels` and `reductions`."
            )

    def forward(self, features: list[Tensor], image: Tensor) -> DecoderOutput:
        """Decode.

        Args:
            features: encoder maps, ``features[i]`` of shape (B, in_channels[i], H / in_reductions[i], ...).
            image: the (normalised) model input (B, C, H, W); only decoders that read the image use it.

        Returns:
            ``DecoderOutput`` with ``out`` and the named ``levels``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(features, image).")


def stage_index(reduction: int) -> int:
    """log2 of a power-of-two stride (4 -> 2), used in level and module names; raises otherwise."""
    index = round(math.log2(reduction)) if reduction > 0 else -1
    if reduction <= 0 or 2**index != reduction:
        raise ValueError(f"Stride {reduction} is not a power of two; level names need strides like 4, 8, 16, 32.")
    return index

"""The networks of a self-supervised run: student/teacher encoder-decoders, the levels DeCon attaches to, and
the parameters no loss reaches.

The encoder and decoder are built by :class:`predec.models.base.DenseModel`, so their keys are those of a
downstream model: ``student.encoder.*``, ``student.decoder.*``, ``teacher.*`` in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from predec.config import ConfigError
from predec.models.decoders.base import DecoderOutput
from predec.models.encoders import TimmBackbone
from predec.pretrain.config import PretrainModelConfig


def build_networks(config: PretrainModelConfig, *, load_weights: bool = True) -> tuple[TimmBackbone, nn.Module | None]:
    """The encoder and (optional) decoder, built by :class:`predec.models.base.DenseModel` so that their keys and
    shapes are exactly those of a downstream model with the same settings.

    Args:
        config: model settings.
        load_weights: resolve ``encoder_weights`` / ``decoder_weights`` (False when a checkpoint follows).
    """
    from predec.models.base import DenseModel
    from predec.models.weights import load_weights as load

    if config.arch is None:
        encoder = TimmBackbone(config.encoder, in_chans=config.in_chans, **config.encoder_kwargs)
        decoder = None
    else:
        dense = DenseModel(
            config.arch,
            encoder=config.encoder,
            decoder=config.decoder,
            task="depth",  # the head is dropped: any task builds the same encoder and decoder
            # The smallest head (one conv) draws the fewest random numbers, so the projectors built after it start
            # alike whatever the downstream head defaults are.
            head_kwargs={"convs": 0},
            in_chans=config.in_chans,
            encoder_kwargs=dict(config.encoder_kwargs) or None,
            **config.decoder_kwargs,
        )
        encoder, decoder = dense.encoder, dense.decoder
    if load_weights:
        load(encoder, config.encoder_weights, part="encoder")
        if decoder is not None:
            load(decoder, config.decoder_weights, part="decoder")
        elif config.decoder_weights is not None:
            raise ConfigError(f"model.decoder_weights={config.decoder_weights!r} is set but there is no decoder.")
    return encoder, decoder


class EncoderDecoder(nn.Module):
    """The student (or teacher) network: encoder and optional decoder, as in a ``DenseModel`` without head.

    Args:
        encoder: the ``TimmBackbone``.
        decoder: a registered decoder, or None (SlotCon).
    """

    def __init__(self, encoder: TimmBackbone, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, images: Tensor) -> tuple[list[Tensor], DecoderOutput | None]:
        """Args:
            images: normalised views (B, in_chans, S, S).

        Returns:
            The encoder maps (strides ``encoder.reductions``) and the decoder output (None without decoder).
        """
        features = self.encoder(images)
        decoded = self.decoder(features, images) if self.decoder is not None else None
        return features, decoded


def attach_levels(decoder: nn.Module, method: str, levels: Sequence[str] | None) -> list[str]:
    """The decoder levels the DeCon loss attaches to.

    Args:
        decoder: the decoder (its ``level_channels`` and ``default_level``).
        method: ``decon-sl`` (default level) or ``decon-ml`` (every level).
        levels: explicit level names, overriding the method's choice.

    Raises:
        ValueError: the decoder exposes no level, or a requested level is not one of its levels.
    """
    available = list(getattr(decoder, "level_channels", None) or {})
    name = type(decoder).__name__
    if not available:
        raise ValueError(
            f"The {name} decoder exposes no level a pre-training loss can attach to (empty `level_channels`): DeCon "
            "needs a decoder with named levels (fpn, fcn, unet, deeplabv3plus, xnet)."
        )
    if levels is not None:
        unknown = [level for level in levels if level not in available]
        if unknown:
            raise ValueError(f"ssl.levels {unknown} are not levels of the {name} decoder; its levels: {available}.")
        return list(levels)
    if method == "decon-sl":
        default = getattr(decoder, "default_level", None)
        if default not in available:
            raise ValueError(
                f"The {name} decoder has no valid default_level ({default!r}; levels {available}): set ssl.levels."
            )
        return [default]
    return available


class MomentumPair(NamedTuple):
    """A student module, its EMA teacher copy, and the side of the network (``encoder`` or ``decoder``)."""

    student: nn.Module
    teacher: nn.Module
    side: str


def freeze_unreached(network: EncoderDecoder, levels: Sequence[str], encoder_loss: bool) -> list[str]:
    """Freeze (``requires_grad=False``) the parameters of ``network`` that no loss term can reach.

    Examples: FPN ``fpn_output3..5`` in DeCon-SL (the reference removes them; here they stay, untrained, so the
    checkpoint still fits a downstream FPN), the ×Net decoder's output Re-Shape. Frozen parameters get no gradient,
    so DDP needs no ``find_unused_parameters``. Reachability is read from the autograd graph of one tiny forward
    (zeros, eval mode, no state changed).

    Returns:
        The names of the frozen parameters.
    """
    stride = network.encoder.output_stride
    if network.decoder is not None:
        stride = math.lcm(stride, int(getattr(network.decoder, "input_divisor", 1)))
    side = 2 * stride
    was_training = network.training
    params = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
    network.eval()
    try:
        with torch.enable_grad():
            features, decoded = network(torch.zeros(2, network.encoder.in_chans, side, side))
            outputs = [features[-1]] if encoder_loss else []
            outputs += [decoded.levels[level] for level in levels] if decoded is not None else []
            total = sum(out.float().sum() for out in outputs)
            grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
    finally:
        network.train(was_training)
    frozen = [name for (name, param), grad in zip(params, grads) if grad is None]
    for name, param in params:
        if name in frozen:
            param.requires_grad_(False)
    return frozen

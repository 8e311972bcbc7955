"""Export the weights of a pre-training checkpoint to the key layouts of timm, detectron2 and mmsegmentation.

The papers' downstream protocols run in other toolboxes (``docs/decon.md`` §5): Mask R-CNN R50-FPN in detectron2,
FCN heads in mmsegmentation. A predec pre-training checkpoint (``last.ckpt`` or ``weights.safetensors``) holds
``teacher.encoder.*`` / ``teacher.decoder.*`` (and ``student.*``); these functions rename them:

- ``timm``: the encoder with timm's own keys (``conv1.weight``, ``layer1.0.bn1.weight``...), a ``.safetensors`` that
  ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` or ``create_model(encoder_weights=...)`` loads.
- ``detectron2``: ``{"model": state}`` in a ``.pth`` whose keys are those of detectron2's ``GeneralizedRCNN`` with the
  ResNet-FPN backbone: ``backbone.bottom_up.stem.conv1.weight``, ``backbone.bottom_up.res2.0.conv1.norm.weight``,
  ``backbone.bottom_up.res2.0.shortcut.weight`` (renaming as detectron2's ``tools/convert-torchvision-to-d2.py``),
  ``backbone.fpn_lateral2.weight``, ``backbone.fpn_lateral2.norm.weight``, ``backbone.fpn_output2.weight``... (predec's
  FPN already uses detectron2's names). torchvision/timm ResNets put the stride in the 3×3 conv: set
  ``MODEL.RESNETS.STRIDE_IN_1X1: False``, and ``MODEL.FPN.NORM`` to the pre-training FPN's norm (BN → ``SyncBN``).
- ``mmseg``: ``{"state_dict": state, "meta": {...}}`` in a ``.pth`` with ``backbone.<timm key>`` (mmseg's
  ``ResNet``/``ResNetV1b`` names equal timm's: ``backbone.layer1.0.conv1.weight``; not ``ResNetV1c``, whose deep stem
  differs) and ``decode_head.convs.0.conv.weight``, ``decode_head.convs.0.bn.weight``... (predec's FCN uses mmseg's
  ``FCNHead`` names; the classifier ``conv_seg`` is trained anew).

The teacher's weights are exported by default (as the papers transfer ``encoder_k``/``decoder_k``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

import predec
from predec.atomic import atomic_path
from predec.models.weights import read_state_dict

FORMATS: tuple[str, ...] = ("timm", "detectron2", "mmseg")
SOURCES: tuple[str, ...] = ("teacher", "student")

RESNET_KEY = re.compile(
    r"^(conv1|bn1|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
"""timm / torchvision ResNet keys (plain 7×7 stem, basic or bottleneck blocks) that map onto detectron2 and mmseg."""


def pretrained_parts(path: str | os.PathLike, source: str = "teacher") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The encoder and decoder state dicts of a pre-training checkpoint.

    Args:
        path: ``last.ckpt`` (Lightning) or ``weights.safetensors`` of a ``predec pretrain`` run.
        source: ``teacher`` (default) or ``student``.

    Returns:
        ``(encoder, decoder)``: ``TimmBackbone`` keys (``model.<timm key>``) and decoder keys (empty without decoder).

    Raises:
        ValueError: no ``<source>.encoder.*`` keys (not a pre-training checkpoint), or an unknown ``source``.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: expected one of {SOURCES}.")
    state = read_state_dict(path)
    encoder = _strip(state, f"{source}.encoder.")
    if not encoder:
        prefixes = sorted({k.split(".", 1)[0] for k in state})[:10]
        raise ValueError(
            f"{path} holds no '{source}.encoder.*' keys (top-level names: {prefixes}): it is not a predec "
            "pre-training checkpoint (last.ckpt or weights.safetensors of `predec pretrain`)."
        )
    return encoder, _strip(state, f"{source}.decoder.")


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def encoder_to_timm(encoder: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``TimmBackbone`` keys (``model.conv1.weight``) → timm keys (``conv1.weight``)."""
    foreign = [k for k in encoder if not k.startswith("model.")]
    if foreign:
        raise ValueError(f"Encoder keys {foreign[:5]} are not TimmBackbone keys ('model.<timm key>').")
    return {k.removeprefix("model."): v for k, v in encoder.items()}


def _check_resnet(timm_state: Mapping[str, Tensor], layout: str) -> None:
    unmatched = [k for k in timm_state if not RESNET_KEY.match(k)]
    if unmatched:
        raise ValueError(
            f"The {layout} layout takes a plain ResNet encoder (timm resnet18/34/50/101/152: conv1, bn1, layer1-4); "
            f"the encoder's keys {unmatched[:5]} have no counterpart there. Export the encoder with format 'timm'."
        )


def resnet_to_detectron2(timm_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm ResNet keys → detectron2 ``ResNet`` keys under ``backbone.bottom_up.`` (``num_batches_tracked`` dropped)."""
    _check_resnet(timm_state, "detectron2")
    out = {}
    for key, value in timm_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = key if "layer" in key else f"stem.{key}"
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[f"backbone.bottom_up.{name}"] = value
    return out


def fpn_to_detectron2(decoder: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """predec FPN keys (detectron2's names) → ``backbone.fpn_*`` (``num_batches_tracked`` dropped)."""
    foreign = [k for k in decoder if not re.match(r"^fpn_(lateral|output)\d\.", k)]
    if foreign:
        raise ValueError(
            f"The detectron2 layout takes an FPN decoder (keys fpn_lateral*/fpn_output*); this decoder has keys "
            f"{foreign[:5]}. Export the encoder alone with format 'timm', or pre-train with model.arch=fpn."
        )
    return {f"backbone.{k}": v for k, v in decoder.items() if not k.endswith("num_batches_tracked")}


def fcn_to_mmseg(decoder: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """predec FCN keys (mmseg ``FCNHead`` names) → ``decode_head.*``."""
    foreign = [k for k in decoder if not re.match(r"^(convs\.\d+|conv_cat)\.(conv|bn)\.", k)]
    if foreign:
        raise ValueError(
            f"The mmseg layout takes an FCN decoder (keys convs.N.conv/bn, conv_cat); this decoder has keys "
            f"{foreign[:5]}. Export the encoder alone with format 'timm', or pre-train with model.arch=fcn."
        )
    return {f"decode_head.{k}": v for k, v in decoder.items()}


def to_detectron2(encoder: Mapping[str, Tensor], decoder: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Mask R-CNN R-FPN backbone state dict (``backbone.bottom_up.*`` and, with an FPN, ``backbone.fpn_*``)."""
    state = resnet_to_detectron2(encoder_to_timm(encoder))
    if decoder:
        state.update(fpn_to_detectron2(decoder))
    return state


def to_mmseg(encoder: Mapping[str, Tensor], decoder: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An mmseg ``EncoderDecoder`` state dict (``backbone.*`` and, with an FCN, ``decode_head.*``)."""
    timm_state = encoder_to_timm(encoder)
    _check_resnet(timm_state, "mmseg")
    state = {f"backbone.{k}": v for k, v in timm_state.items()}
    if decoder:
        state.update(fcn_to_mmseg(decoder))
    return state


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str, source: str = "teacher") -> Path:
    """Convert a pre-training checkpoint to ``fmt`` and write it to ``out`` (atomically).

    Args:
        checkpoint: ``last.ckpt`` or ``weights.safetensors`` of a ``predec pretrain`` run.
        out: output file: ``.safetensors`` for ``timm``, ``.pth`` for ``detectron2`` and ``mmseg``.
        fmt: ``timm`` (encoder), ``detectron2`` (ResNet encoder + FPN), ``mmseg`` (ResNet encoder + FCN head).
        source: ``teacher`` (default) or ``student``.

    Returns:
        The written path.

    Raises:
        ValueError: unknown format, wrong suffix, or weights that do not fit the layout (the message says which).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; valid: {', '.join(FORMATS)}.")
    out = Path(out)
    suffix = ".safetensors" if fmt == "timm" else ".pth"
    if out.suffix != suffix:
        raise ValueError(f"The {fmt} export is written as {suffix}; got --out {out}.")
    encoder, decoder = pretrained_parts(checkpoint, source)
    meta = {"source": f"{checkpoint}#{source}", "exporter": f"predec {predec.__version__}"}
    with atomic_path(out) as tmp:
        if fmt == "timm":
            tensors = {k: v.contiguous() for k, v in encoder_to_timm(encoder).items()}
            safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
        elif fmt == "detectron2":
            torch.save({"model": _contiguous(to_detectron2(encoder, decoder)), "__author__": meta["exporter"]}, tmp)
        else:
            torch.save({"state_dict": _contiguous(to_mmseg(encoder, decoder)), "meta": meta}, tmp)
    return out


def _contiguous(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}

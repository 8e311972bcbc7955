"""``DenseModel`` (encoder → decoder → head), ``create_model``, ``list_models`` and ``from_pretrained``.

A ``DenseModel`` is rebuilt from its ``config`` alone: the config never holds weight specs, so loading a saved
model (``from_pretrained``) restores its own tensors and never resolves encoder or decoder weights again.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from predec.models.decoders import DECODERS, build_decoder
from predec.models.decoders.base import checks_enabled
from predec.models.decoders.xnet import DEFAULT_RESHAPE, LEGACY_RESHAPE
from predec.models.encoders import TimmBackbone, check_backbone_name
from predec.models.heads import HEAD_OPTIONS, LEGACY_HEAD, TASKS, build_head
from predec.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from predec.models.weights import HUB_PREFIX, WeightSpec, load_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PAD_MODES: tuple[str, ...] = ("reflect", "replicate", "constant")


def list_models(filter: str = "") -> list[str]:
    """Names of the dense architectures (``arch`` of :func:`create_model`); backbones are any timm model
    (``timm.list_models``).

    Args:
        filter: a shell-style pattern as in timm (``"*net"``, ``"fp?"``); empty: every architecture.
    """
    names = sorted(DECODERS)
    return [n for n in names if fnmatch.fnmatchcase(n, filter)] if filter else names


def _unknown(kind: str, name: str, valid: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")


def _process_umask() -> int:
    """The process's file-creation mask (read from /proc where there is one: setting it to read it is not
    thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


class DenseModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="predec",
    tags=["predec", "dense-prediction"],
):
    """Encoder (timm backbone) → decoder (any registered architecture) → task head.

    Build it with :func:`predec.create_model` (which also loads weights); ``DenseModel(**model.config)`` rebuilds
    the architecture with random weights.

    Args:
        arch: decoder architecture, one of :func:`list_models` (``"xnet"``, ``"fpn"``, ...).
        encoder: timm model name of the encoder.
        decoder: timm classification model used as the ×Net decoder (``arch="xnet"`` only, required there).
        task: ``"depth"`` or ``"segmentation"``.
        num_classes: number of classes (segmentation only, required there).
        max_depth: largest depth in metres (depth only).
        min_depth: smallest depth in metres (depth only).
        in_chans: input channels.
        mean: per-channel mean of the input normalisation ``(x / 255 - mean) / std`` (ImageNet's by default; the
            data transforms use the same), recorded in the config so that :meth:`preprocess` and :meth:`predict`
            normalise raw images as the model was trained.
        std: per-channel standard deviation of that normalisation.
        encoder_kwargs: extra keyword arguments for ``timm.create_model`` of the encoder (e.g. ``drop_path_rate``).
        head_kwargs: task head options over the decoder's ``head_defaults``: ``convs`` (Conv3×3-BN-ReLU blocks
            before the final conv) and ``channels`` (their width; None: the decoder output's). None or ``{}``: the
            defaults (FPN: ``{"convs": 2, "channels": 128}``; the other architectures: ``convs=0``). The config
            records the resolved options (:func:`head_options`).
        **decoder_kwargs: keyword arguments of the decoder class (JSON-serialisable, they go into the config).

    Attributes:
        encoder: the ``TimmBackbone``.
        decoder: the decoder; its ``DecoderOutput.out`` feeds the head.
        head: ``DepthHead`` or ``SegmentationHead``; it upsamples bilinearly to the input size (depth: before the
            sigmoid; segmentation: the logits).
    """

    def __init__(
        self,
        arch: str,
        encoder: str = "resnet18",
        decoder: str | None = None,
        task: str = "segmentation",
        num_classes: int | None = None,
        max_depth: float = 10.0,
        min_depth: float = 0.0,
        in_chans: int = 3,
        encoder_kwargs: dict[str, Any] | None = None,
        head_kwargs: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **decoder_kwargs: Any,
    ) -> None:
        super().__init__()
        if arch not in DECODERS:
            raise _unknown("architecture", arch, sorted(DECODERS))
        if task not in TASKS:
            raise _unknown("task", task, TASKS)
        if task == "segmentation" and num_classes is None:
            raise ValueError("task='segmentation' needs num_classes (the number of classes, e.g. 21 for VOC).")
        if task == "depth" and num_classes is not None:
            raise ValueError(f"num_classes={num_classes} is for task='segmentation'; task='depth' predicts one map.")
        head = head_options(arch, head_kwargs)
        for name, value in [*(encoder_kwargs or {}).items(), *decoder_kwargs.items(), *head.items()]:
            try:
                json.dumps(value)
            except TypeError as err:
                raise ValueError(
                    f"Model option {name}={value!r} is not JSON-serialisable, so the saved config could not rebuild "
                    "the model; pass plain numbers, strings, lists or dicts."
                ) from err
        check_backbone_name(encoder)
        self.arch = arch
        self.task = task
        self.in_chans = int(in_chans)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans or min(self.std) <= 0:
            raise ValueError(
                f"mean={list(self.mean)}, std={list(self.std)}: one value per input channel ({self.in_chans}), "
                "std > 0 (the normalisation of the model's inputs, e.g. ImageNet's)."
            )
        recorded = {**recorded_options(arch, decoder_kwargs), "head_kwargs": head}
        recorded |= {"mean": list(self.mean), "std": list(self.std)}
        self._hub_mixin_config = {**(self._hub_mixin_config or {}), **recorded}
        self.encoder = TimmBackbone(encoder, in_chans=in_chans, **(encoder_kwargs or {}))
        if arch == "xnet":
            if decoder is None:
                raise ValueError(
                    "arch='xnet' needs decoder=<timm classification model name>, the pre-trained decoder backbone "
                    "(e.g. decoder='convnext_atto')."
                )
            if "backbone" in decoder_kwargs:
                raise ValueError("Give the ×Net decoder backbone once, as decoder=..., not also as backbone=....")
            check_backbone_name(decoder)
            decoder_kwargs = {"backbone": decoder, "in_chans": self.in_chans, **decoder_kwargs}
        elif decoder is not None:
            raise ValueError(
                f"decoder={decoder!r} names a ×Net decoder backbone, but arch={arch!r} builds its own decoder: "
                "leave decoder=None, or use arch='xnet'."
            )
        self.decoder = build_decoder(arch, self.encoder.channels, self.encoder.reductions, **decoder_kwargs)
        self.head = build_head(
            task, self.decoder.out_channels, num_classes=num_classes, max_depth=max_depth, min_depth=min_depth, **head
        )
        self._encoder_frozen = False

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (a plain JSON-able dict): ``DenseModel(**config)`` rebuilds the architecture."""
        return dict(self._hub_mixin_config or {})

    @property
    def output_stride(self) -> int:
        """Input height and width must be multiples of this (``predict`` pads to it)."""
        strides = [self.encoder.output_stride, int(getattr(self.decoder, "input_divisor", 1))]
        backbone = getattr(self.decoder, "backbone", None)
        if isinstance(backbone, TimmBackbone):
            strides.append(backbone.output_stride)
        return math.lcm(*strides)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"Expected images (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}.")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        s = self.output_stride
        if h % s or w % s:
            down = (h // s * s, w // s * s)
            up = (-(-h // s) * s, -(-w // s) * s)
            down_text = f"{down[0]}×{down[1]} (crop or resize down) or " if min(down) > 0 else ""
            raise ValueError(
                f"Input size {h}×{w} is not divisible by the model's output stride {s}: use {down_text}"
                f"{up[0]}×{up[1]} (pad up), or call model.predict(x), which pads and crops back."
            )

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: normalised images (B, in_chans, H, W), H and W multiples of ``output_stride``.

        Returns:
            depth: (B, 1, H, W) metres in ``(min_depth, max_depth]``; segmentation: logits (B, num_classes, H, W).
        """
        if checks_enabled():
            self._check_input(x)
        features = self.encoder(x)
        decoded = self.decoder(features, x)
        size = None if self.decoder.out_reduction == 1 else (x.shape[-2], x.shape[-1])
        return self.head(decoded.out, size=size)

    def preprocess(self, images: Any) -> Tensor:
        """Raw images → the normalised float batch (B, in_chans, H, W) the model takes, on its device: a PIL image,
        an (H, W, C) / (B, H, W, C) uint8 array, a (C, H, W) / (B, C, H, W) uint8 tensor, or a list of these
        (:func:`predec.models.preprocess.preprocess` with this model's ``mean`` and ``std``)."""
        device = next(self.parameters()).device
        return preprocess(images, self.mean, self.std, device=device)

    @torch.no_grad()
    def predict(self, x: Any, pad_mode: str = "reflect") -> Tensor:
        """Inference on any input size: eval mode, no grad, pad bottom/right to ``output_stride``, crop back.

        Args:
            x: normalised float images (B, in_chans, H, W) of any H, W; or raw images — a PIL image, a uint8
                array or tensor, a list of them — normalised first by :meth:`preprocess`.
            pad_mode: ``"reflect"`` (default; falls back to ``"replicate"`` when the image is smaller than the
                padding), ``"replicate"`` or ``"constant"`` (zeros).

        Returns:
            As ``forward``, cropped to (H, W). The model's training mode is restored afterwards.
        """
        if pad_mode not in PAD_MODES:
            raise _unknown("pad_mode", pad_mode, PAD_MODES)
        if not (isinstance(x, Tensor) and x.is_floating_point()):
            x = self.preprocess(x)
        elif x.numel() and (largest := float(x.detach().abs().amax())) > 25.0:
            warnings.warn(
                f"predict: input values up to {largest:.0f} look like raw 0-255 pixels in a "
                "float tensor; pass uint8 images (predict normalises them) or model.preprocess(images).",
                stacklevel=2,
            )
        if x.ndim != 4:
            raise ValueError(f"Expected images (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        s = self.output_stride
        pad_h, pad_w = -h % s, -w % s
        if pad_h or pad_w:
            mode = "replicate" if pad_mode == "reflect" and (pad_h >= h or pad_w >= w) else pad_mode
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        was_training = self.training
        self.eval()
        try:
            y = self(x)
        finally:
            self.train(was_training)
        return y[..., :h, :w]

    def freeze_encoder(self) -> None:
        """Stop training the encoder: no gradients, and its norm layers stay in eval mode (frozen statistics)."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self._encoder_frozen = True

    def unfreeze_encoder(self) -> None:
        """Undo :meth:`freeze_encoder`."""
        self.encoder.requires_grad_(True)
        self.encoder.train(self.training)
        self._encoder_frozen = False

    def train(self, mode: bool = True) -> DenseModel:
        """As ``nn.Module.train``; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self._encoder_frozen:
            self.encoder.eval()
        return self

    def _save_pretrained(self, save_directory: Path) -> None:
        """``huggingface_hub``'s save (``config.json`` + ``model.safetensors``), the weights file then given the
        permissions of the process's umask like every other file (safetensors writes it owner-only, 0600)."""
        super()._save_pretrained(save_directory)
        os.chmod(Path(save_directory) / WEIGHTS_NAME, 0o666 & ~_process_umask())

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> DenseModel:
        """Rebuild from the config (random init, no weight resolution), then load ``model.safetensors`` strictly."""
        model = cls(**saved_config(model_kwargs))
        if os.path.isdir(model_id):
            weights = Path(model_id) / WEIGHTS_NAME
            if not weights.is_file():
                raise FileNotFoundError(f"{str(weights)!r} not found: a saved predec model holds {WEIGHTS_NAME}.")
        else:
            from huggingface_hub import hf_hub_download

            weights = hf_hub_download(
                repo_id=model_id,
                filename=WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        load_weights(model, str(weights), part="model", strict=strict)  # torn or foreign files: errors naming them
        return model.to(map_location)


def recorded_options(arch: str | None, decoder_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The decoder options a saved model records: ``decoder_kwargs`` with the defaults that define its shapes
    filled in (×Net's ``reshape``), so that a later default cannot change what a saved model is. Configs that differ
    only by such a default compare equal through it."""
    options = dict(decoder_kwargs or {})
    if arch == "xnet":
        options.setdefault("reshape", DEFAULT_RESHAPE)
    return options


def head_options(arch: str | None, head_kwargs: Mapping[str, Any] | None, *, strict: bool = True) -> dict[str, Any]:
    """The task head options of a model of ``arch``: ``HEAD_OPTIONS`` (``convs=0``, ``channels=None``), then the
    decoder class's ``head_defaults`` (FPN: two 128-wide blocks), then ``head_kwargs``; ``channels`` is None when
    ``convs`` is 0. This resolved dict is what a saved model records, so a later default cannot change what a saved
    model is.

    Args:
        arch: architecture name (an unknown one gets no decoder defaults).
        head_kwargs: the user's options (None or ``{}``: the defaults).
        strict: refuse keys that are not head options (False: keep them, for comparing configs).

    Raises:
        ValueError: ``head_kwargs`` is not a dict, or names an unknown option (the valid ones listed).
    """
    if head_kwargs is not None and not isinstance(head_kwargs, Mapping):
        raise ValueError(f"head_kwargs must be a dict of head options (convs, channels), got {head_kwargs!r}.")
    options = dict(head_kwargs or {})
    for name in options:
        if strict and name not in HEAD_OPTIONS:
            close = difflib.get_close_matches(str(name), list(HEAD_OPTIONS), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown head option head_kwargs[{name!r}]={options[name]!r}; valid: {', '.join(HEAD_OPTIONS)}.{hint}"
            )
    decoder = DECODERS.get(arch) if isinstance(arch, str) else None
    defaults = decoder.head_defaults if decoder is not None else {}
    resolved = {**HEAD_OPTIONS, **defaults, **options}
    if resolved.get("convs") == 0:
        resolved["channels"] = None  # no blocks, no width: every linear head records the same options
    return resolved


INPUT_NORMALISATION_KEYS = ("mean", "std")
"""Config keys of the model's input normalisation (:meth:`DenseModel.preprocess`), not of its architecture."""

FILE_OPTION_LIMITS = {"int": 16384, "list": 32, "str": 64}
"""Bounds on the backbone options a model file (config.json, a checkpoint's recipe) may carry: integers up to 16384
(channel widths, depths), lists up to 32 items, strings up to 64 characters without a path in them."""
_BACKBONE_OPTION_KEYS = ("encoder_kwargs", "backbone_kwargs")
FILE_OPTION_WORDS = ("file", "url", "checkpoint", "cache", "cfg", "hub", "pretrained")
FILE_OPTION_ENDINGS = ("path", "dir", "root")
"""A backbone option a model file may not set whatever its value: its name has one of :data:`FILE_OPTION_WORDS` or
ends with one of these (timm's ``checkpoint_path``, ``pretrained_cfg``, ``cache_dir``... make loading read other files
or the network; the file's own weights are the model's). ``drop_path_rate`` is a rate, not a path."""


def check_file_options(config: Mapping[str, Any], source: str) -> None:
    """Refuse backbone options of a model file that a model never needs and that would make loading it open or write
    other files or allocate without bound: options named for files or weights (:data:`FILE_OPTION_WORDS`,
    :data:`FILE_OPTION_ENDINGS`), nested mappings, path-like or long strings, integers or lists beyond
    :data:`FILE_OPTION_LIMITS`.

    Args:
        config: the model settings read from the file (``config.json`` or a recipe's ``model`` section).
        source: the file, named in the error.

    Raises:
        ValueError: naming the option and the limit.
    """
    limits = FILE_OPTION_LIMITS

    def check(key: str, value: Any) -> None:
        where = f"{source}: {key}={value!r}"
        name = key.rsplit(".", 1)[-1].lower()
        if any(word in name for word in FILE_OPTION_WORDS) or name.endswith(FILE_OPTION_ENDINGS):
            raise ValueError(
                f"{where}: an option that names files, a cache or pre-trained weights is not one a "
                "model file may set (its own weights are the model's)."
            )
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return
        if isinstance(value, int):
            if abs(value) > limits["int"]:
                raise ValueError(f"{where} is beyond {limits['int']}: not a model option this file may set.")
        elif isinstance(value, str):
            if len(value) > limits["str"] or any(c in value for c in "/\\~") or ".." in value:
                raise ValueError(f"{where}: a path or long text is not a backbone option a model file may set.")
        elif isinstance(value, (list, tuple)):
            if len(value) > limits["list"]:
                raise ValueError(f"{where} has more than {limits['list']} items.")
            for item in value:
                if isinstance(item, (dict, list, tuple)):
                    raise ValueError(f"{where}: nested values are not backbone options a model file may set.")
                check(key, item)
        else:
            raise ValueError(f"{where}: a {type(value).__name__} is not a backbone option a model file may set.")

    def walk(mapping: Mapping[str, Any], prefix: str) -> None:
        for name in _BACKBONE_OPTION_KEYS:
            options = mapping.get(name)
            if options is None:
                continue
            if not isinstance(options, Mapping):
                raise ValueError(f"{source}: {prefix}{name} must be a mapping of options, got {options!r}.")
            for key, value in options.items():
                check(f"{prefix}{name}.{key}", value)
        nested = mapping.get("decoder_kwargs")
        if isinstance(nested, Mapping):
            walk(nested, f"{prefix}decoder_kwargs.")

    walk(config, "")


def saved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved ``DenseModel.config`` (``config.json``) as this version rebuilds it, with what configs written by
    earlier versions left out filled in as those versions built it: a ×Net config without ``reshape`` gets
    ``LEGACY_RESHAPE`` (``"pixelshuffle"``); a config without ``head_kwargs`` gets ``LEGACY_HEAD`` (``convs=0``:
    the head was its final convolution alone)."""
    config = dict(config)
    if config.get("arch") == "xnet" and "reshape" not in config:
        config["reshape"] = LEGACY_RESHAPE
    if "head_kwargs" not in config:
        config["head_kwargs"] = dict(LEGACY_HEAD)
    return config


def create_model(
    arch: str,
    encoder: str = "resnet18",
    decoder: str | None = None,
    task: str = "segmentation",
    num_classes: int | None = None,
    max_depth: float = 10.0,
    min_depth: float = 0.0,
    encoder_weights: WeightSpec = None,
    decoder_weights: WeightSpec = None,
    in_chans: int = 3,
    encoder_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    **decoder_kwargs: Any,
) -> DenseModel:
    """Build a dense model and load its encoder and decoder weights.

    Args:
        arch: decoder architecture, one of :func:`list_models`.
        encoder: timm model name of the encoder (any timm model with ``features_only`` support).
        decoder: timm classification model name of the ×Net decoder (``arch="xnet"`` only, required there).
        task: ``"depth"`` or ``"segmentation"``.
        num_classes: number of classes (segmentation only, required there).
        max_depth: largest depth in metres (depth only); outputs lie in ``(min_depth, max_depth]``.
        min_depth: smallest depth in metres (depth only).
        encoder_weights: weight spec of the encoder (see :mod:`predec.models.weights`); None = random init.
        decoder_weights: weight spec of the decoder: timm weights (``True``, a tag, a timm-style file) go into the
            ×Net decoder backbone; a predec checkpoint (``decoder.*``/``teacher.decoder.*``) into the whole decoder.
        in_chans: input channels (pretrained 3-channel input convolutions are adapted as timm does).
        encoder_kwargs: extra ``timm.create_model`` keyword arguments of the encoder.
        head_kwargs: task head options over the architecture's defaults: ``convs`` (Conv3×3-BN-ReLU blocks before
            the final conv; FPN's default 2, the others' 0) and ``channels`` (their width; FPN's default 128, else
            the decoder output's). Unknown keys are refused.
        **decoder_kwargs: options of the decoder class.

    Returns:
        The ``DenseModel`` (training mode). Weight loading is strict: missing, unexpected or shape-mismatched keys
        raise a ``ValueError`` naming them.
    """
    model = DenseModel(
        arch,
        encoder=encoder,
        decoder=decoder,
        task=task,
        num_classes=num_classes,
        max_depth=max_depth,
        min_depth=min_depth,
        in_chans=in_chans,
        encoder_kwargs=encoder_kwargs,
        head_kwargs=head_kwargs,
        **decoder_kwargs,
    )
    load_weights(model.encoder, encoder_weights, part="encoder")
    load_weights(model.decoder, decoder_weights, part="decoder")
    return model


def from_pretrained(path_or_repo: str | os.PathLike, **kwargs: Any) -> DenseModel:
    """Load a model written by ``save_pretrained``: rebuilt from its config, then its own tensors (strict).

    Args:
        path_or_repo: a directory holding ``config.json`` + ``model.safetensors``; a ``.safetensors`` file with a
            ``config.json`` beside it; or ``"hf-hub:org/name"``, a Hugging Face Hub repo (read from the cache when
            ``HF_HUB_OFFLINE=1``). Anything else is a local path: a missing one never goes to the network.
        **kwargs: passed to ``huggingface_hub.ModelHubMixin.from_pretrained`` (``revision``, ``cache_dir``, ...).

    Returns:
        The model in eval mode.
    """
    text = str(path_or_repo)
    if text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX) :]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ValueError(f"Hub model {text!r} must read '{HUB_PREFIX}org/name'.")
        return DenseModel.from_pretrained(repo, **kwargs).eval()
    path = Path(path_or_repo)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{str(path / CONFIG_NAME)!r} not found: {str(path)!r} is not a directory written by save_pretrained."
            )
        path = path / WEIGHTS_NAME  # read like a .safetensors file: corrupt or foreign files get predec's errors
    if path.suffix == ".safetensors":
        config_file = path.with_name(CONFIG_NAME)
        for needed in (path, config_file):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"{str(needed)!r} not found: a .safetensors model needs {CONFIG_NAME} beside it."
                )
        config = json.loads(config_file.read_text(encoding="utf-8"))
        check_file_options(config, str(config_file))
        model = DenseModel(**saved_config(config))
        load_weights(model, path, part="model")
        return model.eval()
    if path.exists():
        raise FileNotFoundError(
            f"{text!r} is a file, not a save_pretrained directory nor a .safetensors file with {CONFIG_NAME} beside it."
        )
    hint = f" For a Hugging Face Hub repo write '{HUB_PREFIX}{text}'." if text.count("/") == 1 else ""
    raise FileNotFoundError(
        f"{text!r} is not a local directory or file (no such path): expected a save_pretrained directory or a "
        f".safetensors file with {CONFIG_NAME} beside it.{hint}"
    )

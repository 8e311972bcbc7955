"""Reading a dense model's weights from any of the forms predec writes: :func:`load_dense_checkpoint`.

- :class:`DenseCheckpoint`: weights plus what is known of their model and recipe.
- :func:`check_checkpoint_architecture` / :func:`load_state_checked`: refuse weights of another model, naming
  the settings or keys.
- :func:`inference_config` / :func:`load_inference_module`: a checkpoint ready for ``eval``, ``predict`` and
  ``export``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from predec.config import ConfigError, DenseConfig, ModelConfig, from_dict, to_dict
from predec.engine.checkpoint import read_checkpoint
from predec.engine.dense import DenseModule, architecture_mismatch, head_override
from predec.models.base import CONFIG_NAME, INPUT_NORMALISATION_KEYS, WEIGHTS_NAME, saved_config
from predec.models.decoders.xnet import LEGACY_RESHAPE
from predec.models.heads import LEGACY_HEAD
from predec.models.weights import load_state, read_state_dict

_MODEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if not f.name.endswith(("_weights", "_kwargs"))
)  # what save_pretrained's config.json holds besides encoder_kwargs, head_kwargs and the decoder's options
_HEAD_BLOCK = re.compile(r"head\.blocks\.(\d+)\.conv\.weight")


@dataclass
class DenseCheckpoint:
    """A dense model's weights and what is known of its config.

    Attributes:
        path: the file or directory read.
        state_dict: ``DenseModel`` state dict (keys ``encoder.*``, ``decoder.*``, ``head.*``).
        model_config: the model settings (``ModelConfig`` fields) if the checkpoint records them.
        config: the whole recipe if the checkpoint records it (Lightning checkpoints of ``predec train``).
        step: the optimiser step of a training checkpoint.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    model_config: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _model_config_from_json(config: dict[str, Any]) -> dict[str, Any]:
    """``DenseModel.config`` (save_pretrained's config.json) → ``ModelConfig`` fields (the input normalisation,
    ``mean``/``std``, is not one: recipes train with the data transforms' ImageNet normalisation)."""
    config = saved_config(config)
    known = {k: config[k] for k in _MODEL_FIELDS if k in config}
    known["encoder_kwargs"] = dict(config.get("encoder_kwargs") or {})
    known["head_kwargs"] = dict(config.get("head_kwargs") or {})
    extra = (*_MODEL_FIELDS, "encoder_kwargs", "head_kwargs", *INPUT_NORMALISATION_KEYS)
    known["decoder_kwargs"] = {k: v for k, v in config.items() if k not in extra}
    return known


def _head_blocks(state_dict: dict[str, torch.Tensor]) -> tuple[int, int | None]:
    """Number of hidden head blocks in a ``DenseModel`` state dict and their width (None without blocks)."""
    widths = {int(m.group(1)): int(v.shape[0]) for k, v in state_dict.items() if (m := _HEAD_BLOCK.fullmatch(k))}
    return len(widths), widths.get(len(widths) - 1)


def load_dense_checkpoint(path: str | Path) -> DenseCheckpoint:
    """Read the weights of a dense model from any of the forms predec writes, refusing non-finite ones.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: unreadable file, a pre-training checkpoint, weights/buffers holding NaN or Inf (named), or
            backbone options a model file may not set (:func:`predec.models.base.check_file_options`).
    """
    from predec.engine.guards import name_list, nonfinite_tensors
    from predec.models.base import check_file_options

    checkpoint = _read_dense_checkpoint(path)
    if checkpoint.model_config:
        check_file_options(checkpoint.model_config, str(checkpoint.path))
    bad = nonfinite_tensors(checkpoint.state_dict)
    if bad:
        raise ValueError(
            f"{checkpoint.path} holds non-finite weights (NaN or Inf in {name_list(bad)}): a diverged run's model, "
            "not usable. Use an earlier checkpoint of that run (checkpoints/last.previous.ckpt) or train it again."
        )
    return checkpoint


def _read_dense_checkpoint(path: str | Path) -> DenseCheckpoint:
    """Read the weights of a dense model from any of the forms predec writes.

    A recipe or ``config.json`` recorded before the head options existed gets the head its model had then
    (``head_kwargs={"convs": 0}``, :data:`predec.models.heads.LEGACY_HEAD`).

    Accepted: a ``predec train`` Lightning checkpoint (``.ckpt``; carries the recipe), a ``save_pretrained``
    directory (``config.json`` + ``model.safetensors``; carries the model settings), a ``.safetensors`` file (with
    ``config.json`` beside it if available), or a ``.pt``/``.pth`` state dict of a ``DenseModel``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: unreadable file, or a pre-training checkpoint (which initialises encoders/decoders instead).
    """
    path = Path(path)
    if path.is_dir():
        weights, config_file = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.is_file() or not config_file.is_file():
            raise FileNotFoundError(f"{path} is a directory without config.json + model.safetensors (save_pretrained).")
        model_config = _model_config_from_json(json.loads(config_file.read_text()))
        return DenseCheckpoint(path, read_state_dict(weights), model_config=model_config)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} not found.")
    if path.suffix == ".safetensors":
        config_file = path.with_name(CONFIG_NAME)
        model_config = _model_config_from_json(json.loads(config_file.read_text())) if config_file.is_file() else None
        return DenseCheckpoint(path, read_state_dict(path), model_config=model_config)
    raw = read_checkpoint(path)
    config = (raw.get("hyper_parameters") or {}).get("config")
    state = raw.get("state_dict", raw.get("model", raw))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Checkpoint {path} holds no state dict of tensors (looked at 'state_dict', 'model', top).")
    if any(k.startswith(("teacher.", "student.")) for k in state):
        raise ValueError(
            f"{path} is a pre-training checkpoint (teacher/student weights), not a dense model: fine-tune one from "
            f"it first (predec train with model.encoder_weights={path} model.decoder_weights={path}), then use that "
            "run's checkpoints/last.ckpt or its save_pretrained model/ directory."
        )
    if any(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if config and isinstance(config.get("model"), dict) and "head_kwargs" not in config["model"]:
        # a recipe recorded before the head options existed: its model had the head of that time
        config = {**config, "model": {**config["model"], "head_kwargs": dict(LEGACY_HEAD)}}
    return DenseCheckpoint(
        path,
        state,
        model_config=dict(config["model"]) if config else None,
        config=config,
        step=raw.get("global_step"),
    )


def load_state_checked(model: torch.nn.Module, checkpoint: DenseCheckpoint, description: str) -> None:
    """Load ``checkpoint.state_dict`` into ``model`` strictly (:func:`predec.models.weights.load_state`).

    Raises:
        ValueError: missing/unexpected/shape-mismatched keys, named (the checkpoint is from another architecture).
    """
    hint = (
        f"\nThe model is the one of {description}; the checkpoint was written for another architecture: use the "
        "recipe it was trained with."
    )
    key = "decoder.input_reshape.proj.weight"  # its shape tells the ×Net Re-Shape modes apart
    saved, built = checkpoint.state_dict.get(key), model.state_dict().get(key)
    if saved is not None and built is not None and saved.shape != built.shape:
        hint += (
            f" Its ×Net Re-Shapes differ ({key} {tuple(saved.shape)} in the checkpoint, {tuple(built.shape)} in the "
            f"model): a ×Net trained before the default became 'bilinear' needs "
            f"model.decoder_kwargs.reshape={LEGACY_RESHAPE} in its recipe."
        )
    saved_head, built_head = _head_blocks(checkpoint.state_dict), _head_blocks(model.state_dict())
    if "head.conv.weight" in checkpoint.state_dict and saved_head != built_head:
        convs, width = saved_head
        why = "its linear head (the head of every model trained before FPN's gained conv blocks)" if not convs else "it"
        options = head_override({"convs": convs, "channels": width})
        blocks = [f"{n} Conv3x3-BN-ReLU blocks" + (f" {w} wide" if n else "") for n, w in (saved_head, built_head)]
        hint += (
            f" Its head differs ({blocks[0]} in the checkpoint, {blocks[1]} in the model): {why} needs "
            f"model.head_kwargs={options} in its recipe."
        )
    load_state(model, checkpoint.state_dict, part="model", origin=str(checkpoint.path), hint=hint)


def check_checkpoint_architecture(checkpoint: DenseCheckpoint, config: DenseConfig) -> None:
    """Raise a ``ValueError`` naming the settings if the checkpoint's model differs from ``config.model``."""
    if checkpoint.model_config is None:
        return
    differences = architecture_mismatch(checkpoint.model_config, to_dict(config.model))
    if differences:
        saved = checkpoint.model_config
        raise ValueError(
            f"Checkpoint {checkpoint.path} holds a {saved.get('arch')!r} model (encoder {saved.get('encoder')!r}"
            + (f", decoder {saved.get('decoder')!r}" if saved.get("decoder") else "")
            + f", task {saved.get('task')!r}), not the one of the config: {'; '.join(differences)}. "
            "Evaluate it with its own recipe (omit --config), or pass the checkpoint of this recipe."
        )


def describe_model(config: ModelConfig) -> str:
    """``arch 'xnet' (encoder 'resnet18', decoder 'resnet18', task 'depth')``."""
    decoder = f", decoder {config.decoder!r}" if config.decoder else ""
    return f"arch {config.arch!r} (encoder {config.encoder!r}{decoder}, task {config.task!r})"


def model_config_of(checkpoint: DenseCheckpoint) -> ModelConfig:
    """The checkpoint's model settings as a :class:`ModelConfig` (weights specs cleared).

    Raises:
        ConfigError: the checkpoint records no model settings (a bare state dict).
    """
    if checkpoint.model_config is None:
        raise ConfigError(
            f"Checkpoint {checkpoint.path} does not record its model settings (a bare state dict); use a predec "
            "train .ckpt, a save_pretrained directory, or a .safetensors file with config.json beside it."
        )
    fields = {**checkpoint.model_config, "encoder_weights": None, "decoder_weights": None}
    return from_dict(ModelConfig, fields)


def inference_config(checkpoint: DenseCheckpoint) -> DenseConfig:
    """The recipe to run ``checkpoint`` with: its own (``predec train`` checkpoints), else the defaults around its
    model settings; weight specs cleared (the checkpoint's weights replace them) and ``channels_last`` off.

    Raises:
        ConfigError: the checkpoint records neither a recipe nor model settings.
    """
    if checkpoint.config is not None:
        config = from_dict(DenseConfig, checkpoint.config)
    else:
        config = DenseConfig(model=model_config_of(checkpoint))
    config.model.encoder_weights = config.model.decoder_weights = None
    config.trainer.channels_last = False
    return config


def load_inference_module(checkpoint: DenseCheckpoint, config: DenseConfig | None = None) -> DenseModule:
    """A :class:`DenseModule` holding the checkpoint's weights, in eval mode (on the CPU).

    Args:
        checkpoint: from :func:`load_dense_checkpoint`.
        config: the recipe (default :func:`inference_config`); its model settings must fit the checkpoint.
            ``module.model`` is the ``DenseModel``; ``module.inference`` applies ``config.eval``.

    Raises:
        ConfigError: no recipe or model settings recorded and ``config`` not given.
        ValueError: the weights do not fit the model (keys or shapes named).
    """
    config = inference_config(checkpoint) if config is None else config
    module = DenseModule(config, build_weights=False)
    load_state_checked(module.model, checkpoint, describe_model(config.model))
    return module.eval()

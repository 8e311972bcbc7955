"""Recipes: YAML files validated against typed dataclass schemas, with dotted-key overrides.

A recipe is a YAML mapping whose keys mirror a schema dataclass (:class:`DenseConfig` for ``predec train`` /
``eval`` / ``predict``; ``predec.pretrain.config.PretrainConfig`` for ``predec pretrain``, built from the same
parts). Loading:

1. the YAML file is read (a name such as ``dense/synth_depth_xnet`` is looked up among the recipes shipped in
   ``predec/configs``; ``.yaml`` may be left out);
2. overrides ``a.b=c`` are applied, each value parsed with ``yaml.safe_load`` (``optim.lr=1e-4``,
   ``eval.scales=[0.5,1.0]``, ``model.decoder=null``);
3. the result is validated against the schema: unknown keys are rejected with the valid ones listed (and the
   closest match), values of the wrong type are rejected naming the key and the expected type.

The resolved config (every field, defaults included) is saved as ``config.yaml`` in the run directory and
reloads to the same dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from predec.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit its schema (the message names the key and what is expected)."""


# --------------------------------------------------------------------------------------------------------------
# Schemas shared by every engine
# --------------------------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """Optimiser and its parameter groups (see :func:`predec.optim.build_optimizer`).

    Attributes:
        name: ``adamw``, ``sgd`` or ``lars``.
        lr: base learning rate (after ``lr_scaling``, the lr of a group with multiplier 1).
        weight_decay: decay of weight matrices/kernels; norms, biases, 1-D parameters and position tables get 0.
        momentum: SGD / LARS momentum.
        betas: AdamW betas.
        eps: AdamW epsilon.
        nesterov: SGD Nesterov momentum.
        lars_eta: LARS trust coefficient η.
        lr_scaling: ``none``, or ``linear``: lr = base lr × global batch / 256.
        encoder_lr_mult: lr multiplier of parameters under a module named ``encoder``.
        decoder_lr_mult: lr multiplier of parameters under a module named ``decoder``.
        head_lr_mult: lr multiplier of parameters under a module named ``head``.
        pretrained_lr_mult: dense training: lr multiplier (on top of the part's) of the parts that start from
            pre-trained weights: the encoder when ``model.encoder_weights`` is set; when ``model.decoder_weights`` is
            set, ×Net's decoder backbone, or the whole decoder of the other architectures (DeCon).
        grad_clip_norm: clip the global gradient norm to this value (None: no clipping).
    """

    name: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    nesterov: bool = False
    lars_eta: float = 0.001
    lr_scaling: Literal["none", "linear"] = "none"
    encoder_lr_mult: float = 1.0
    decoder_lr_mult: float = 1.0
    head_lr_mult: float = 1.0
    pretrained_lr_mult: float = 1.0
    grad_clip_norm: float | None = None


@dataclass
class ScheduleConfig:
    """Per-iteration learning-rate schedule (see :func:`predec.optim.lr_multiplier`).

    Attributes:
        name: ``constant``, ``plateau``, ``poly``, ``cosine`` or ``step``. ``plateau`` (``predec train`` with
            ``trainer.monitor``): constant after the warm-up, multiplied by ``gamma`` whenever the monitored
            validation metric has not improved (by more than ``trainer.min_delta``) for ``plateau_patience``
            validations in a row, never below ``min_lr`` (PyTorch's ``ReduceLROnPlateau`` rule; with
            ``trainer.patience`` the run stops once the plateaus stop yielding).
        warmup_steps: linear warm-up length in optimiser steps.
        warmup_ratio: lr multiplier at step 0 of the warm-up (rises linearly to 1).
        power: exponent of the ``poly`` decay.
        min_lr: lr reached at the last step by ``poly`` and ``cosine`` (absolute; groups keep their ratios).
        milestones: ``step``: absolute optimiser steps at which the lr is multiplied by ``gamma``.
        gamma: ``step`` and ``plateau`` decay factor.
        plateau_patience: ``plateau``: validations without improvement before a decay.
    """

    name: Literal["constant", "plateau", "poly", "cosine", "step"] = "poly"
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    plateau_patience: int = 3


@dataclass
class TrainerConfig:
    """The ``lightning.Trainer`` and the run loop (see :func:`predec.engine.trainer.build_trainer`).

    Attributes:
        accelerator: ``auto``, ``cpu``, ``gpu``, ``cuda``, ``mps``...
        devices: number of devices per node, a list of device ids, or ``auto``.
        num_nodes: number of nodes.
        strategy: ``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``...
        precision: ``auto`` (``bf16-mixed`` where the hardware has bf16 units, else ``32-true``) or any Lightning
            precision (``32-true``, ``bf16-mixed``, ``16-mixed``...).
        channels_last: run model and inputs in channels-last memory format (the default: oneDNN's and cuDNN's
            native layout, 1.11-1.15× faster fine-tuning steps and 1.2-1.7× faster validation of the demo's convnets
            on CPU in fp32; docs/benchmarks.md, "Where a fine-tuning step goes"); the numbers equal the contiguous
            layout's within float tolerance.
        max_steps: optimiser steps of the run (schedules are defined on it).
        val_every_n_steps: validate every N steps (None: only at the end).
        monitor: validation metric that selects the weights a run ends with (``predec train``): ``auto`` (the task's
            main metric: ``val/mIoU`` for segmentation, ``val/abs_rel`` for depth) or ``val/<metric>``; needs
            ``val_every_n_steps``. The best validation's weights are kept in ``checkpoints/best.ckpt`` and become the
            run's model and its final evaluation (on ``data.test_split`` when one is set). None: the last weights.
        patience: early stopping: stop after this many validations in a row without an improvement of the monitored
            metric by more than ``min_delta`` (needs ``monitor``; None: train all ``max_steps``).
        min_delta: the smallest change of the monitored metric that counts as an improvement.
        checkpoint_every_n_steps: write ``checkpoints/last.ckpt`` every N steps (None: only at the end).
        snapshot_every_n_steps: also keep the weights of every N-th step as ``snapshots/step<N>.ckpt`` (weights
            only, never removed by predec: e.g. to probe a pre-training run along the way); None: none.
        log_every_n_steps: logging interval.
        accumulate_grad_batches: gradient accumulation.
        deterministic: ask torch for deterministic algorithms.
        progress_bar: show Lightning's progress bar.
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under DDP.
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    max_steps: int = 1000
    val_every_n_steps: int | None = None
    monitor: str | None = None
    patience: int | None = None
    min_delta: float = 0.0
    checkpoint_every_n_steps: int | None = 500
    snapshot_every_n_steps: int | None = None
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    progress_bar: bool = True
    sync_batchnorm: bool = False


# --------------------------------------------------------------------------------------------------------------
# Dense prediction (train / eval / predict)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Arguments of :func:`predec.create_model`.

    Attributes:
        arch: ``xnet``, ``fpn``, ``unet``, ``deeplabv3plus`` or ``fcn``.
        encoder: timm model name of the encoder (a pretrained tag may follow a dot).
        decoder: timm model name of the ×Net decoder backbone (``xnet`` only).
        task: ``depth`` or ``segmentation``.
        num_classes: segmentation classes.
        max_depth: depth head range (metres).
        min_depth: depth head lower bound (metres).
        encoder_weights: weight spec of the encoder (None: random init; see predec.models.weights).
        decoder_weights: weight spec of the decoder.
        in_chans: input channels.
        encoder_kwargs: extra timm arguments of the encoder (e.g. ``output_stride: 16``).
        decoder_kwargs: extra arguments of the decoder constructor.
        head_kwargs: task head options over the architecture's defaults: ``convs`` (Conv3×3-BN-ReLU blocks before
            the final conv) and ``channels`` (their width); empty: the architecture's defaults (FPN: ``{convs: 2,
            channels: 128}``, the others ``{convs: 0}``; see predec.models.heads).
    """

    arch: str = "fpn"
    encoder: str = "resnet18"
    decoder: str | None = None
    task: Literal["depth", "segmentation"] = "segmentation"
    num_classes: int | None = None
    max_depth: float = 10.0
    min_depth: float = 0.0
    encoder_weights: str | None = None
    decoder_weights: str | None = None
    in_chans: int = 3
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Datasets and loaders (see :mod:`predec.engine.datamodule`).

    Attributes:
        dataset: ``synth`` (SynthScenes, generated) or a reader: ``nyu``, ``kitti``, ``voc``, ``cityscapes``,
            ``ade20k``.
        root: dataset root directory (readers).
        val_root: root of the evaluation split if it differs (NYU's BTS layout: ``sync`` vs ``official_splits/test``).
        train_split: split of the training set (reader-specific name or split file).
        val_split: split of the evaluation set (the validation set when a test split is given).
        test_split: split evaluated once at the end of training with the weights the run ends with (the best
            validation's with ``trainer.monitor``); None: the final evaluation is on ``val_split``.
        num_train: ``synth``: number of training scenes.
        num_val: ``synth``: number of evaluation (validation) scenes.
        num_test: ``synth``: number of test scenes (used when ``test_split`` is set).
        image_size: ``synth``: rendered size [H, W].
        synth_seed: ``synth``: generator seed of the training scenes (evaluation scenes use ``synth_seed + 1``, test
            scenes ``synth_seed + 2``).
        crop_size: training crop [H, W] (None: ``image_size`` for ``synth``; readers need one).
        batch_size: training images per device.
        eval_batch_size: evaluation images per device.
        num_workers: loader worker processes.
        reader_kwargs: extra keyword arguments of the dataset reader (both splits; ``synth``: render options).
        train_reader_kwargs: extra keyword arguments of the reader for the training split only (VOC + SBD:
            ``{augmented: true}`` with ``train_split: train_aug``).
        train_transform_kwargs: extra keyword arguments of ``train_transform``.
    """

    dataset: str = "synth"
    root: str | None = None
    val_root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = None
    num_train: int = 256
    num_val: int = 64
    num_test: int = 64
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    synth_seed: int = 0
    crop_size: list[int] | None = None
    batch_size: int = 8
    eval_batch_size: int = 1
    num_workers: int = 0
    reader_kwargs: dict[str, Any] = field(default_factory=dict)
    train_reader_kwargs: dict[str, Any] = field(default_factory=dict)
    train_transform_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Task losses (functions of :mod:`predec.tasks`).

    Attributes:
        silog_variant: depth SILog form: ``adabins`` (unbiased variance) or ``bts`` (see predec.tasks.depth).
        silog_lambda: depth SILog variance weight λ (``mean(g²) − λ·mean(g)²``).
        silog_scale: depth SILog multiplier.
        class_weights: segmentation per-class cross-entropy weights (None: uniform).
        ignore_index: segmentation label ignored by the loss and the metrics.
    """

    silog_variant: Literal["adabins", "bts"] = "adabins"
    silog_lambda: float = 0.85
    silog_scale: float = 10.0
    class_weights: list[float] | None = None
    ignore_index: int = 255


@dataclass
class EvalConfig:
    """Evaluation protocol.

    Attributes:
        resize: resize images to [H, W] for inference (None: native size); predictions are resized back to the
            ground truth's size before scoring.
        mode: ``whole`` image or ``slide`` (windows of ``crop_size`` every ``stride``, averaged).
        crop_size: ``slide`` window [H, W].
        stride: ``slide`` stride [H, W].
        scales: image scales averaged at test time (``[1.0]``: single scale).
        flip: also average the horizontally flipped prediction.
        depth_crop: depth evaluation crop: ``none``, ``eigen`` (NYU), ``garg`` or ``eigen_kitti`` (KITTI).
        min_depth: depth evaluation range lower bound (metres).
        max_depth: depth evaluation range upper bound (None: the model's ``max_depth``).
    """

    resize: list[int] | None = None
    mode: Literal["whole", "slide"] = "whole"
    crop_size: list[int] | None = None
    stride: list[int] | None = None
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    depth_crop: Literal["none", "eigen", "garg", "eigen_kitti"] = "none"
    min_depth: float = 1e-3
    max_depth: float | None = None

    def __post_init__(self) -> None:
        """Refuse a protocol that could only fail after training (checked when the recipe loads)."""
        if self.mode == "slide":
            for key in ("crop_size", "stride"):
                value = getattr(self, key)
                if value is None or len(value) != 2 or min(value) < 1:
                    raise ConfigError(
                        f"eval.mode='slide' needs eval.{key} as [H, W] of positive pixels, got {value!r}; "
                        "e.g. eval.crop_size=[512,512] eval.stride=[341,341] (or eval.mode=whole)."
                    )
        if self.max_depth is not None and self.max_depth <= self.min_depth:
            raise ConfigError(f"eval.max_depth={self.max_depth} must exceed eval.min_depth={self.min_depth}.")


@dataclass
class DenseConfig:
    """A dense-prediction recipe (``predec train`` / ``eval`` / ``predict``).

    Attributes:
        name: run name; the run directory is ``output_dir/name``.
        output_dir: parent of run directories.
        seed: global seed (model init, data order, augmentation).
        model: the model.
        data: datasets and loaders.
        loss: losses.
        optim: optimiser.
        schedule: learning-rate schedule.
        trainer: Lightning trainer and loop.
        eval: evaluation protocol.
    """

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


RUNTIME_KEYS: tuple[str, ...] = (
    "name",
    "output_dir",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "trainer.snapshot_every_n_steps",
    "data.num_workers",
)
"""Keys of a recipe (dense or pre-training) that may change when an interrupted run is resumed: where and how
fast it runs, not what it computes."""


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def recipes_dir() -> Path:
    """Directory of the recipes shipped with predec (``predec/configs``; the repo-root ``configs`` links to it)."""
    return Path(str(resources.files("predec") / "configs"))


def list_recipes() -> list[str]:
    """Names of the shipped recipes, relative to :func:`recipes_dir` without ``.yaml`` (``dense/synth_depth_xnet``)."""
    root = recipes_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a recipe argument to a file.

    Args:
        name_or_path: an existing path, or a shipped recipe name (``dense/synth_depth_xnet``, ``.yaml`` optional; a
            leading ``configs/`` is accepted too).

    Returns:
        Path of the YAML file.

    Raises:
        ConfigError: nothing matches; the message lists the shipped recipes.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removeprefix("configs/").removeprefix("predec/configs/")
    for candidate in (recipes_dir() / name, recipes_dir() / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    names = list_recipes()
    close = difflib.get_close_matches(name.removesuffix(".yaml"), names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Recipe {str(name_or_path)!r} is neither a file nor a shipped recipe.{hint} Shipped: {', '.join(names)}."
    )


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``a.b=c`` strings into (key path, value) pairs; values are parsed with ``yaml.safe_load``.

    Raises:
        ConfigError: an item without ``=`` or with an empty key, or a value that is not valid YAML.
    """
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"Override {item!r} is not of the form key.subkey=value (e.g. optim.lr=1e-4).")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"Override {item!r}: the value {text!r} is not valid YAML ({err}).") from err
        parsed.append((parts, value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of the nested mapping ``data`` with the ``a.b=c`` overrides applied (validation comes later)."""
    result = _deep_copy(data)
    for parts, value in parse_overrides(overrides):
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"Override {'.'.join(parts)}: {where!r} holds a {type(child).__name__}, not a section."
                )
            node = child
        node[parts[-1]] = value
    return result


def load_config(
    source: str | Path | Mapping[str, Any] | None,
    overrides: Sequence[str] = (),
    schema: type[T] = DenseConfig,  # type: ignore[assignment]
) -> T:
    """Load a recipe, apply overrides and validate it.

    Args:
        source: a YAML file or shipped recipe name (see :func:`find_recipe`), a mapping, or None (schema defaults).
        overrides: ``key.subkey=value`` strings.
        schema: the dataclass to validate against.

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: unreadable YAML, unknown keys, wrong types; the message names the file and the key.
    """
    origin = "config"
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        path = find_recipe(source)
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"Cannot read recipe {path}: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Recipe {path} must hold a YAML mapping at the top level, not {type(loaded).__name__}.")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return from_dict(schema, data)
    except ConfigError as err:
        suffix = f" (overrides: {' '.join(overrides)})" if overrides else ""
        raise ConfigError(f"{origin}: {err}{suffix}") from None


def from_dict(schema: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build a schema dataclass from a nested mapping, checking keys and types.

    Args:
        schema: a dataclass type.
        data: nested mapping of plain values.
        prefix: dotted path of ``data`` (used in error messages).

    Raises:
        ConfigError: unknown key (valid keys listed, closest match suggested) or wrong type (key and expected type).
    """
    if not isinstance(data, Mapping):
        where = prefix or "the top level"
        raise ConfigError(f"{where}: expected a mapping of {schema.__name__} fields, got {_describe(data)}.")
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    hints = typing.get_type_hints(schema)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        section = f"in {prefix!r}" if prefix else "at the top level"
        raise ConfigError(
            f"Unknown config key {_join(prefix, str(key))!r}.{hint} Valid keys {section}: {', '.join(fields)}."
        )
    values = {name: _convert(hints[name], data[name], _join(prefix, name)) for name in fields if name in data}
    return schema(**values)


OTHER_LIBRARY_NAMES: dict[str, str] = {
    "pretrained": "Weights are given per part in predec: encoder_weights / decoder_weights (True or 'pretrained' "
    "for timm's default weights, 'predec:NAME' for a zoo entry, or a file).",
    "encoder_name": "predec's name for the encoder is encoder (any timm model name).",
    "classes": "predec's name for it is num_classes.",
    "in_channels": "predec's name for it is in_chans.",
}
"""Options users of segmentation_models_pytorch / timm pass by habit, and what predec calls them."""


def check_options(target: Callable[..., Any], options: Mapping[str, Any], key: str, fixed: Sequence[str] = ()) -> None:
    """Refuse keyword options that ``target`` does not take, before calling it (a TypeError deep in a build would
    not say which config key was wrong).

    Args:
        target: the class or function the options go to.
        options: the keyword options (a config mapping such as ``model.decoder_kwargs``).
        key: the config key they come from, named in the error.
        fixed: parameters the caller passes itself (not valid as options).

    Raises:
        ConfigError: an unknown option, with the closest valid one and the list of valid ones.
    """
    parameters = inspect.signature(target).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    valid = [p.name for p in parameters if p.kind in kinds and p.name not in fixed]
    unknown = [name for name in options if name not in valid]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if unknown[0] in OTHER_LIBRARY_NAMES:
            hint = f" {OTHER_LIBRARY_NAMES[unknown[0]]}"
        name = getattr(target, "__qualname__", repr(target))
        raise ConfigError(
            f"Unknown option {key}.{unknown[0]} for {name}.{hint} Valid options: {', '.join(valid) or 'none'}."
        )


def to_dict(config: Any) -> dict[str, Any]:
    """The plain nested dict (YAML-safe: tuples become lists) of a schema instance."""
    return _plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> Path:
    """Write a schema instance as YAML (every field, defaults included); :func:`load_config` reads it back."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (keys missing on one side included)."""
    keys = []
    for key in sorted(set(a) | set(b), key=str):
        name = _join(prefix, str(key))
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += diff_configs(va, vb, name)
        elif va != vb:
            keys.append(name)
    return keys


# --------------------------------------------------------------------------------------------------------------
# Type checking
# --------------------------------------------------------------------------------------------------------------


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (int→float, list→tuple, dataclasses)."""
    ok, result = _try_convert(tp, value, key)
    if not ok:
        raise ConfigError(f"Config key {key!r}: expected {_type_name(tp)}, got {_describe(value)}.")
    return result


def _try_convert(tp: Any, value: Any, key: str) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True, value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            return False, None
        return True, from_dict(tp, value, key)  # nested errors are raised with their own key
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own (more precise) error
            return _try_convert(options[0], value, key)
        for arg in options:
            try:
                ok, result = _try_convert(arg, value, key)
            except ConfigError:
                continue
            if ok:
                return True, result
        return False, None
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return True, value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Config key {key!r}: {value!r} is not one of {', '.join(repr(a) for a in args)}.{hint}")
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if tp is str:
        return isinstance(value, str), value
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            return False, None
        item_tp = args[0] if args else Any
        return True, [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, None
        if len(args) == 2 and args[1] is Ellipsis:
            return True, tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            return False, None
        return True, tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            return False, None
        return True, _deep_copy(dict(value))
    raise TypeError(f"Unsupported schema annotation {tp!r} for config key {key!r}.")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, Sequence):
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if origin in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

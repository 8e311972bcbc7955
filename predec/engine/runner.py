"""Dense runs from Python: :func:`train_dense`, :func:`evaluate_dense`, :func:`load_dense_checkpoint`.

The ``predec train`` / ``eval`` / ``predict`` commands are thin wrappers around these functions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from predec.config import ConfigError, DenseConfig, ModelConfig, from_dict, to_dict
from predec.engine.checkpoint import newest_valid_checkpoint, read_checkpoint
from predec.engine.datamodule import DenseDataModule, check_task
from predec.engine.dense import DenseModule, architecture_mismatch
from predec.engine.run_dir import FAILED, FINISHED, RUNNING, RunDir
from predec.engine.trainer import build_trainer
from predec.models.weights import read_state_dict
from predec.optim import check_schedule

logger = logging.getLogger(__name__)

RUNTIME_KEYS: tuple[str, ...] = (
    "name",
    "output_dir",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "data.num_workers",
)
"""Settings that may change when an interrupted run is resumed (they do not change its result)."""

_MODEL_FIELDS = ("arch", "encoder", "decoder", "task", "num_classes", "max_depth", "min_depth", "in_chans")


class RunExistsError(FileExistsError):
    """The run directory already holds a finished run."""


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


@dataclass
class TrainResult:
    """Outcome of :func:`train_dense`: run directory, final step and the final evaluation metrics."""

    run_dir: RunDir
    step: int
    metrics: dict[str, Any]


def _model_config_from_json(config: dict[str, Any]) -> dict[str, Any]:
    """``DenseModel.config`` (save_pretrained's config.json) → ``ModelConfig`` fields."""
    known = {k: config[k] for k in _MODEL_FIELDS if k in config}
    known["encoder_kwargs"] = dict(config.get("encoder_kwargs") or {})
    known["decoder_kwargs"] = {k: v for k, v in config.items() if k not in (*_MODEL_FIELDS, "encoder_kwargs")}
    return known


def load_dense_checkpoint(path: str | Path) -> DenseCheckpoint:
    """Read the weights of a dense model from any of the forms predec writes.

    Accepted: a ``predec train`` Lightning checkpoint (``.ckpt``; carries the recipe), a ``save_pretrained``
    directory (``config.json`` + ``model.safetensors``; carries the model settings), a ``.safetensors`` file (with
    ``config.json`` beside it if available), or a ``.pt``/``.pth`` state dict of a ``DenseModel``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: unreadable file, or a pre-training checkpoint (which initialises encoders/decoders instead).
    """
    path = Path(path)
    if path.is_dir():
        weights, config_file = path / "model.safetensors", path / "config.json"
        if not weights.is_file() or not config_file.is_file():
            raise FileNotFoundError(f"{path} is a directory without config.json + model.safetensors (save_pretrained).")
        model_config = _model_config_from_json(json.loads(config_file.read_text()))
        return DenseCheckpoint(path, read_state_dict(weights), model_config=model_config)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} not found.")
    if path.suffix == ".safetensors":
        config_file = path.with_name("config.json")
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
    return DenseCheckpoint(
        path,
        state,
        model_config=dict(config["model"]) if config else None,
        config=config,
        step=raw.get("global_step"),
    )


def load_state_checked(model: torch.nn.Module, checkpoint: DenseCheckpoint, description: str) -> None:
    """Load ``checkpoint.state_dict`` into ``model`` strictly; on any mismatch raise naming the keys.

    Raises:
        ValueError: missing/unexpected/shape-mismatched keys (the checkpoint is from another architecture).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in checkpoint.state_dict]
    unexpected = [k for k in checkpoint.state_dict if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in checkpoint.state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{name} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
            if items
        ]
        raise ValueError(
            f"Checkpoint {checkpoint.path} does not fit the model of {description}: {'; '.join(parts)}. It was "
            "written for another architecture; use the recipe it was trained with."
        )
    model.load_state_dict(checkpoint.state_dict)


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


def resolve_resume(run: RunDir, resume: str | Path | bool | None, overwrite: bool) -> Path | None:
    """The checkpoint a run in ``run`` starts from (None: from scratch), shared by every engine.

    ``resume`` True/``"last"``: the run's ``last.ckpt`` (must exist); a path: that file; None: the interrupted
    run's checkpoint if any. The run's own checkpoint is taken by content, not path: ``last.ckpt`` if its sha256
    holds, else the one it replaced (``last.previous.ckpt``, with a warning). ``overwrite`` discards the directory's
    previous run (on rank 0) and starts fresh.

    Raises:
        RunLockedError: another live process runs in the directory (rank 0 takes its lock here; the engine's final
            status releases it).
        FileNotFoundError: the requested checkpoint does not exist.
        CorruptCheckpointError: the run's checkpoints exist but none passes its sha256 check.
        RunExistsError: the directory holds a finished run and neither ``resume`` nor ``overwrite`` is given.
    """
    if rank_zero_only.rank == 0:
        run.lock()
    try:
        return _checkpoint_to_start_from(run, resume, overwrite)
    except BaseException:
        run.unlock()
        raise


def _checkpoint_to_start_from(run: RunDir, resume: str | Path | bool | None, overwrite: bool) -> Path | None:
    if resume is True or resume == "last":
        path = newest_valid_checkpoint(run.last_checkpoint)
        if path is None:
            raise FileNotFoundError(f"--resume: {run.last_checkpoint} does not exist: nothing to resume in {run.root}.")
        return path
    if resume:
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {path} not found.")
        return path
    if overwrite:
        if rank_zero_only.rank == 0:
            run.clear()
        return None
    automatic = None if run.is_finished else newest_valid_checkpoint(run.last_checkpoint)
    if automatic is not None:
        rank_zero_only(logger.warning)(
            f"Resuming the interrupted run in {run.root} from {automatic} (status: {run.status().get('state')})."
        )
        return automatic
    if run.is_finished:
        raise RunExistsError(
            f"{run.root} already holds a finished run (see {run.metrics_path}). Choose another run directory "
            "(--run-dir, or name=...), or pass --overwrite to train again there."
        )
    return None


def end_run(run: RunDir, err: BaseException, trainer: L.Trainer | None, start_step: int | None) -> None:
    """Record a run that stopped on ``err`` (status ``failed``, or ``interrupted`` for Ctrl-C), on rank 0; before
    the trainer existed the step is the one it started from."""
    if rank_zero_only.rank == 0:
        state = FAILED if isinstance(err, Exception) else "interrupted"
        step = trainer.global_step if trainer is not None else start_step or 0
        run.set_status(state, step=step, message=str(err))


def train_dense(
    config: DenseConfig,
    run_dir: str | Path | None = None,
    *,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    callbacks: list[L.Callback] | tuple[L.Callback, ...] = (),
) -> TrainResult:
    """Train (or resume) a dense model and evaluate the final weights.

    An existing run directory with a checkpoint and no ``finished`` status is resumed automatically (same config
    required, apart from :data:`RUNTIME_KEYS`).

    Args:
        config: the recipe.
        run_dir: run directory (default ``config.output_dir / config.name``).
        resume: ``True``/``"last"``: the run directory's last checkpoint; a path: that checkpoint; None: automatic.
        overwrite: start from scratch: discard the directory's checkpoints, metrics, model and status first.
        callbacks: extra Lightning callbacks.

    Returns:
        The run directory, final step and final metrics (also in ``metrics.json``).

    Raises:
        NonFiniteLossError: the loss or a gradient became NaN/Inf (status ``failed``, last checkpoint kept).
        RunExistsError: the run directory holds a finished run and ``overwrite`` is False.
        ValueError / ConfigError: a checkpoint of another architecture or config.
    """
    run = RunDir(run_dir or Path(config.output_dir) / config.name)
    ckpt_path = resolve_resume(run, resume, overwrite)
    resumed_step = None
    if ckpt_path is not None:
        resumed = load_dense_checkpoint(ckpt_path)
        check_checkpoint_architecture(resumed, config)
        resumed_step = resumed.step
        if ckpt_path.parent == run.checkpoints:
            run.check_same_config(config, ignore=RUNTIME_KEYS)
    check_task(config.data, config.model.task, config.model.num_classes)
    check_schedule(config.schedule, config.trainer.max_steps)
    if rank_zero_only.rank == 0:
        run.save_config(config)
        run.set_status(RUNNING, resumed_from=str(ckpt_path) if ckpt_path else None)
    L.seed_everything(config.seed, workers=True, verbose=False)
    trainer = None
    try:
        module = DenseModule(config, build_weights=ckpt_path is None)
        trainer_cfg = config.trainer
        datamodule = DenseDataModule(
            config.data, config.model.task, config.seed, trainer_cfg.max_steps, trainer_cfg.accumulate_grad_batches
        )
        trainer = build_trainer(
            config.trainer,
            run,
            callbacks=callbacks,
            grad_clip_norm=config.optim.grad_clip_norm,
            csv_version=f"resumed_step{resumed_step}" if ckpt_path else "",
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"Training interrupted at step {trainer.global_step}.")
        saved_step = getattr(trainer.checkpoint_callback, "_last_global_step_saved", -1)
        if saved_step != trainer.global_step or not run.last_checkpoint.is_file():
            trainer.save_checkpoint(run.last_checkpoint)
        if module.last_metrics_step != trainer.global_step or not module.last_metrics:
            trainer.validate(module, datamodule=datamodule, verbose=False)
    except BaseException as err:
        end_run(run, err, trainer, resumed_step)
        raise
    metrics = {
        "task": config.model.task,
        "step": trainer.global_step,
        "dataset": config.data.dataset,
        "split": config.data.val_split,
        "checkpoint": str(run.last_checkpoint),
        "metrics": module.last_metrics,
    }
    if trainer.is_global_zero:
        run.write_metrics(metrics)
        module.model.to(memory_format=torch.contiguous_format)  # safetensors stores row-major tensors only
        module.model.save_pretrained(run.model_dir)
        run.set_status(FINISHED, step=trainer.global_step)
    return TrainResult(run, trainer.global_step, metrics)


_resolve_resume = resolve_resume  # the name the pre-training engine imported first


def resolve_eval_config(checkpoint: DenseCheckpoint, config: DenseConfig | None, overrides: list[str]) -> DenseConfig:
    """The recipe to evaluate ``checkpoint`` with: ``config`` (checked against it), else the checkpoint's own."""
    if config is not None:
        check_checkpoint_architecture(checkpoint, config)
        return config
    if checkpoint.config is None:
        raise ConfigError(
            f"Checkpoint {checkpoint.path} does not record its recipe; pass --config (the recipe it was trained with)."
        )
    from predec.config import load_config

    return load_config(checkpoint.config, overrides)


def evaluate_dense(config: DenseConfig, checkpoint: DenseCheckpoint, out_dir: str | Path | None = None) -> dict:
    """Evaluate a checkpoint on ``config.data``'s evaluation split; write ``config.yaml`` and ``metrics.json``.

    Args:
        config: the recipe (model settings must match the checkpoint; data/eval/trainer settings are used).
        checkpoint: from :func:`load_dense_checkpoint`.
        out_dir: where to write (default: ``<run>/eval`` beside a run's checkpoint, else ``output_dir/name-eval``).

    Returns:
        The metrics record written to ``metrics.json``, plus ``metrics_file`` (its path).
    """
    check_checkpoint_architecture(checkpoint, config)
    check_task(config.data, config.model.task, config.model.num_classes)
    out = RunDir(out_dir or default_eval_dir(checkpoint.path, config))
    L.seed_everything(config.seed, verbose=False)
    module = DenseModule(config, build_weights=False)
    load_state_checked(module.model, checkpoint, describe_model(config.model))
    datamodule = DenseDataModule(config.data, config.model.task, config.seed)
    trainer = build_trainer(config.trainer, None, training=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    record = {
        "task": config.model.task,
        "checkpoint": str(checkpoint.path),
        "step": checkpoint.step,
        "dataset": config.data.dataset,
        "split": config.data.val_split,
        "world_size": trainer.world_size,
        "metrics": module.last_metrics,
    }
    if trainer.is_global_zero:
        out.save_config(config)
        out.write_metrics(record)
    return {**record, "metrics_file": str(out.metrics_path)}


def default_eval_dir(checkpoint_path: Path, config: DenseConfig) -> Path:
    """``<run>/eval`` for a checkpoint in ``<run>/checkpoints/`` or the ``<run>/model`` directory, else
    ``output_dir/<name>-eval``."""
    path = Path(checkpoint_path)
    if path.parent.name == "checkpoints":
        return path.parent.parent / "eval"
    if path.is_dir() and path.name == "model":
        return path.parent / "eval"
    return Path(config.output_dir) / f"{config.name}-eval"


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

"""Dense runs from Python: :func:`train_dense` and :func:`evaluate_dense`.

The ``predec train`` / ``eval`` commands are thin wrappers around these functions; both runs go through the one run
engine (:func:`predec.engine.run.fit_run`) and read checkpoints with :mod:`predec.engine.dense_checkpoint`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from predec.config import ConfigError, DenseConfig
from predec.engine.checkpoint import read_checkpoint
from predec.engine.datamodule import DenseDataModule, check_task
from predec.engine.dense import DenseModule, monitored_metric
from predec.engine.dense_checkpoint import (
    DenseCheckpoint,
    check_checkpoint_architecture,
    describe_model,
    load_dense_checkpoint,
    load_state_checked,
)
from predec.engine.plateau import PlateauDecay
from predec.engine.run import RunResult, fit_run
from predec.engine.run_dir import RunDir
from predec.engine.trainer import build_trainer
from predec.optim import check_schedule


def train_dense(
    config: DenseConfig,
    run_dir: str | Path | None = None,
    *,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    callbacks: list[L.Callback] | tuple[L.Callback, ...] = (),
) -> RunResult:
    """Train (or resume) a dense model and evaluate the weights it ends with.

    An existing run directory with a checkpoint and no ``finished`` status is resumed automatically (same config
    required, apart from :data:`predec.config.RUNTIME_KEYS`). Writes ``config.yaml``, ``status.json``,
    ``checkpoints/last.ckpt``, ``logs/``, ``metrics.json`` and the trained model (``model/``, save_pretrained).

    The run ends with its last weights, or with ``trainer.monitor`` the best validation's (``checkpoints/best.ckpt``;
    ``trainer.patience`` stops it early), evaluated on ``data.test_split`` if one is set, else on the validation
    split. ``metrics.json`` then also holds ``selection`` (the step chosen and why), ``val_metrics`` (the validation
    metrics of the chosen weights, with a test split) and ``val_history`` (every validation of the run).

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
        ValueError / ConfigError: a checkpoint of another architecture or config, a dataset that cannot serve the
            task, an impossible schedule (checked before the run directory is touched).
    """
    check_task(config.data, config.model.task, config.model.num_classes)
    check_schedule(config.schedule, config.trainer.max_steps)
    monitored = monitored_metric(config)
    trainer_cfg = config.trainer

    checked: dict[Path, DenseCheckpoint] = {}

    def check_checkpoint(path: Path) -> None:
        checked[path] = load_dense_checkpoint(path)
        check_checkpoint_architecture(checked[path], config)

    def build(checkpoint: Path | None) -> tuple[DenseModule, DenseDataModule]:
        module = DenseModule(config, build_weights=checkpoint is None)
        if checkpoint in checked:  # tensors that do not fit are named here, not in Lightning's restore
            load_state_checked(module.model, checked.pop(checkpoint), "this recipe")
        data = DenseDataModule(
            config.data, config.model.task, config.seed, trainer_cfg.max_steps, trainer_cfg.accumulate_grad_batches
        )
        return module, data

    def needs_validation(module: DenseModule, step: int) -> bool:
        return module.last_metrics_step != step or not module.last_metrics

    def finish(trainer: L.Trainer, module: DenseModule) -> dict[str, Any]:
        record: dict[str, Any] = {"task": config.model.task, "step": trainer.global_step}
        metrics = module.last_metrics
        if monitored is not None:
            record["selection"] = select_best_weights(trainer, module, run, *monitored)
            metrics = {k.removeprefix("val/"): v for k, v in module.val_history[record["selection"]["step"]].items()}
        if config.data.test_split is not None:
            record["val_metrics"] = metrics
            trainer.test(module, datamodule=trainer.datamodule, verbose=False)
            metrics = module.last_metrics
        if trainer.is_global_zero:
            module.model.to(memory_format=torch.contiguous_format)  # safetensors stores row-major tensors only
            module.model.save_pretrained(run.model_dir)
        split = config.data.test_split if config.data.test_split is not None else config.data.val_split
        record |= {"dataset": config.data.dataset, "split": split, "metrics": metrics}
        if module.val_history:
            record["val_history"] = {str(step): values for step, values in sorted(module.val_history.items())}
        return record

    run = RunDir(run_dir or Path(config.output_dir) / config.name)
    return fit_run(
        run,
        config,
        trainer_cfg,
        build=build,
        finish=finish,
        resume=resume,
        overwrite=overwrite,
        callbacks=[*callbacks, *selection_callbacks(run, config, monitored)],
        grad_clip_norm=config.optim.grad_clip_norm,
        check_checkpoint=check_checkpoint,
        validate_at_end=needs_validation,
    )


BEST_CHECKPOINT = "best.ckpt"
"""The weights of the best validation so far (``checkpoints/best.ckpt``) when ``trainer.monitor`` is set."""


def selection_callbacks(run: RunDir, config: DenseConfig, monitored: tuple[str, str] | None) -> list[L.Callback]:
    """Lightning's ``ModelCheckpoint`` keeping the best validation's weights (``checkpoints/best.ckpt``), with
    ``trainer.patience`` its ``EarlyStopping``, with ``schedule.name: plateau`` the :class:`PlateauDecay` of the
    learning rate, all on the same metric; none without a monitored metric."""
    if monitored is None:
        return []
    name, mode = monitored
    trainer, schedule = config.trainer, config.schedule
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=run.checkpoints,
            filename=Path(BEST_CHECKPOINT).stem,
            monitor=name,
            mode=mode,
            save_top_k=1,
            save_weights_only=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
            save_on_train_epoch_end=False,
        )
    ]
    if trainer.patience is not None:
        callbacks.append(
            EarlyStopping(
                monitor=name,
                mode=mode,
                patience=trainer.patience,
                min_delta=trainer.min_delta,
                check_on_train_epoch_end=False,
            )
        )
    if schedule.name == "plateau":
        callbacks.append(
            PlateauDecay(name, mode, schedule.plateau_patience, schedule.gamma, trainer.min_delta, schedule.min_lr)
        )
    return callbacks


def best_step(history: dict[int, dict[str, float]], name: str, mode: str) -> int:
    """The step of the best ``name`` in a validation history (``{step: {name: value}}``); the earliest of equals,
    as Lightning's ``ModelCheckpoint`` keeps the first of equal scores.

    Raises:
        ValueError: no validation recorded ``name``.
    """
    scored = [(step, metrics[name]) for step, metrics in sorted(history.items()) if name in metrics]
    if not scored:
        raise ValueError(f"No validation recorded {name!r}; validations: {sorted(history)}.")
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda item: (sign * item[1], -item[0]))[0]


def select_best_weights(trainer: L.Trainer, module: DenseModule, run: RunDir, name: str, mode: str) -> dict[str, Any]:
    """Put the best validation's weights into ``module`` (from ``checkpoints/best.ckpt``, or the current weights when
    the best validation was the final one) and say which step they are from.

    Returns:
        ``{"monitor", "mode", "step", "score", "last_step", "early_stopped"}``.

    Raises:
        ValueError: ``best.ckpt`` holds the weights of another step than the validation history's best.
    """
    step = best_step(module.val_history, name, mode)
    if step != trainer.global_step:
        path = run.checkpoints / BEST_CHECKPOINT
        checkpoint = read_checkpoint(path)
        if int(checkpoint.get("global_step", -1)) != step:
            raise ValueError(
                f"{path} holds the weights of step {checkpoint.get('global_step')}, but the best {name} was validated "
                f"at step {step} ({module.val_history[step][name]:.6g}); the run directory is inconsistent: train "
                "again with --overwrite."
            )
        module.load_state_dict(checkpoint["state_dict"])
    decay = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, PlateauDecay)), None)
    return {
        "monitor": name,
        "mode": mode,
        "step": step,
        "score": module.val_history[step][name],
        "last_step": trainer.global_step,
        "early_stopped": trainer.global_step < (trainer.max_steps or 0),
        **({"lr_decays": list(decay.decays)} if decay is not None else {}),
    }


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

    return load_config(recipe_of_untrusted_checkpoint(checkpoint.config), overrides)


TRUSTED_TRAINER_KEYS = ("precision", "channels_last", "deterministic")
"""The ``trainer`` settings ``predec eval`` takes from a checkpoint's recorded recipe (they change the numbers, not
where or how the process runs); devices, nodes, strategy and the rest are this machine's defaults or the user's
overrides, never a downloaded checkpoint's. ``output_dir`` is never taken either."""


def recipe_of_untrusted_checkpoint(recorded: dict[str, Any]) -> dict[str, Any]:
    """The recorded recipe of a checkpoint as ``predec eval`` uses it: model, data, loss and evaluation settings as
    trained, ``trainer`` reduced to :data:`TRUSTED_TRAINER_KEYS`, no ``output_dir``, and ``name`` reduced to a plain
    file name (no path separators, no ``..``), so the file cannot choose where eval writes or how it launches."""
    recipe = {k: v for k, v in recorded.items() if k not in ("output_dir", "trainer", "name")}
    trainer = recorded.get("trainer") if isinstance(recorded.get("trainer"), dict) else {}
    recipe["trainer"] = {k: trainer[k] for k in TRUSTED_TRAINER_KEYS if k in trainer}
    recipe["name"] = re.sub(r"[^A-Za-z0-9._-]+", "_", str(recorded.get("name") or "run")).strip("._") or "run"
    return recipe


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

"""The one run engine of ``predec train``, ``predec pretrain``, the zoo builds and the demo's stages: :func:`fit_run`.

Everything a run does around ``trainer.fit`` lives here once: the run directory's lock, which checkpoint to start
from (by content: ``last.ckpt`` if its sha256 holds, else the one before), the same-recipe check on resume, the
resolved ``config.yaml``, ``status.json`` kept true (``running`` → ``finished`` / ``failed`` / ``interrupted``, also
for a failure before training), the seed, the trainer, the final checkpoint and ``metrics.json``. What differs
between a dense and a pre-training run comes in as two hooks: ``build`` (the LightningModule and DataModule) and
``finish`` (the run's outputs and its metrics record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only

from predec.allocator import active_allocator
from predec.config import RUNTIME_KEYS, TrainerConfig
from predec.engine.checkpoint import newest_valid_checkpoint, read_checkpoint
from predec.engine.run_dir import FAILED, FINISHED, RUNNING, RunDir
from predec.engine.trainer import build_trainer

logger = logging.getLogger(__name__)

BuildHook = Callable[[Path | None], tuple[L.LightningModule, L.LightningDataModule]]
"""``build(checkpoint)``: the module and data of the run; ``checkpoint`` is the one it resumes from (None: fresh,
so the module resolves its initial weights)."""

FinishHook = Callable[[L.Trainer, L.LightningModule], dict[str, Any]]
"""``finish(trainer, module)``: after the final checkpoint, on every process; writes the run's outputs (on rank 0)
and returns the ``metrics.json`` record."""


class RunExistsError(FileExistsError):
    """The run directory already holds a finished run."""


@dataclass
class RunResult:
    """Outcome of a run: its directory, final optimiser step and the ``metrics.json`` record."""

    run_dir: RunDir
    step: int
    metrics: dict[str, Any]


def resolve_resume(run: RunDir, resume: str | Path | bool | None, overwrite: bool) -> Path | None:
    """Take the run directory's lock and return the checkpoint the run starts from (None: from scratch).

    ``resume`` True/``"last"``: the run's ``last.ckpt`` (must exist); a path: that file; None: the interrupted
    run's checkpoint if any. The run's own checkpoint is taken by content, not path: ``last.ckpt`` if its sha256
    holds, else the one it replaced (``last.previous.ckpt``, with a warning). ``overwrite`` discards the directory's
    previous run (on rank 0) and starts fresh. On any error the lock is released again.

    Raises:
        RunLockedError: another live process runs in the directory (rank 0 takes the lock).
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


def checkpoint_step(path: Path) -> int:
    """The optimiser step a Lightning checkpoint was written at."""
    return int(read_checkpoint(path).get("global_step", 0))


def end_run(run: RunDir, err: BaseException, trainer: L.Trainer | None, start_step: int | None) -> None:
    """Record a run that stopped on ``err`` (status ``failed``, or ``interrupted`` for Ctrl-C) and release its lock,
    on rank 0; before the trainer existed the step is the one it started from."""
    if rank_zero_only.rank == 0:
        state = FAILED if isinstance(err, Exception) else "interrupted"
        step = trainer.global_step if trainer is not None else start_step or 0
        try:
            run.set_status(state, step=step, message=str(err))
        except OSError as status_err:  # the error that stopped the run is the one to report
            logger.warning(f"Could not record status '{state}' in {run.status_path}: {status_err}")
            run.unlock()


def fit_run(
    run: RunDir,
    config: Any,
    trainer_config: TrainerConfig,
    *,
    build: BuildHook,
    finish: FinishHook,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    callbacks: Sequence[L.Callback] = (),
    grad_clip_norm: float | None = None,
    check_checkpoint: Callable[[Path], None] | None = None,
    validate_at_end: Callable[[L.LightningModule, int], bool] | None = None,
) -> RunResult:
    """Run (or resume) one training run in ``run``: fit, final checkpoint, outputs, ``metrics.json``, status.

    An existing run directory with a checkpoint and no ``finished`` status is resumed automatically; a checkpoint
    of the run itself requires the same recipe apart from :data:`predec.config.RUNTIME_KEYS`.

    Args:
        run: the run directory.
        config: the recipe (a config dataclass with ``seed``): written as ``config.yaml``, compared on resume.
        trainer_config: its trainer settings.
        build: the module and data (:data:`BuildHook`).
        finish: the outputs and the metrics record (:data:`FinishHook`).
        resume: ``True``/``"last"``: the run directory's last checkpoint; a path: that checkpoint; None: automatic.
        overwrite: start from scratch: discard the directory's checkpoints, metrics, model and status first.
        callbacks: extra Lightning callbacks.
        grad_clip_norm: clip the gradient norm to this value.
        check_checkpoint: raise if the checkpoint to start from does not fit the recipe (before anything is built).
        validate_at_end: ``(module, step)`` → whether the final weights still need a validation pass.

    Raises:
        RunLockedError, RunExistsError, FileNotFoundError, CorruptCheckpointError: from :func:`resolve_resume`
            (the run's status is left as it was).
        Anything the run raised after the lock was taken (status ``failed``/``interrupted``, lock released):
        NonFiniteLossError, ConfigError (another recipe on resume), ValueError (a foreign checkpoint), ...
    """
    ckpt_path = resolve_resume(run, resume, overwrite)
    start_step, trainer = None, None
    try:
        if ckpt_path is not None:
            if check_checkpoint is not None:
                check_checkpoint(ckpt_path)
            start_step = checkpoint_step(ckpt_path)
            if ckpt_path.parent == run.checkpoints:
                run.check_same_config(config, ignore=RUNTIME_KEYS)
        if rank_zero_only.rank == 0:
            run.save_config(config)
            run.set_status(RUNNING, resumed_from=str(ckpt_path) if ckpt_path else None, allocator=active_allocator())
        L.seed_everything(config.seed, workers=True, verbose=False)
        module, datamodule = build(ckpt_path)
        trainer = build_trainer(
            trainer_config,
            run,
            callbacks=callbacks,
            grad_clip_norm=grad_clip_norm,
            csv_version=f"resumed_step{start_step}" if ckpt_path else "",
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"Run interrupted at step {trainer.global_step}.")
        saved_step = max(
            (getattr(c, "_last_global_step_saved", -1) for c in trainer.checkpoint_callbacks if c.save_last),
            default=-1,
        )
        if saved_step != trainer.global_step or not run.last_checkpoint.is_file():
            trainer.save_checkpoint(run.last_checkpoint)
        if validate_at_end is not None and validate_at_end(module, trainer.global_step):
            trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {**finish(trainer, module), "checkpoint": str(run.last_checkpoint)}
        if trainer.is_global_zero:
            run.write_metrics(metrics)
            run.set_status(FINISHED, step=trainer.global_step, allocator=active_allocator())
    except BaseException as err:
        end_run(run, err, trainer, start_step)
        raise
    return RunResult(run, trainer.global_step, metrics)

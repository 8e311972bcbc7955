"""Build the ``lightning.Trainer`` of a run from :class:`predec.config.TrainerConfig`.

One code path from a laptop CPU to a multi-node GPU cluster: ``accelerator``, ``devices``, ``num_nodes`` and
``strategy`` go to Lightning unchanged (``torchrun`` / SLURM environments are detected by Lightning). ``precision:
auto`` picks ``bf16-mixed`` where the hardware computes in bf16 (CUDA GPUs with bf16 support; CPUs with AVX512-BF16 or
AMX) and ``32-true`` elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from predec.config import ConfigError, OptimConfig, ScheduleConfig, TrainerConfig
from predec.engine.checkpoint import AtomicCheckpointIO, LastCheckpoint, RNGStateCallback
from predec.engine.guards import FiniteWeightsGuard, NonFiniteGradientGuard
from predec.engine.run_dir import RunDir
from predec.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


class _DropLightningTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: For seamless cloud logging ... litlogger") from every run's
    output; its other messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropLightningTips())


def cpu_has_bf16() -> bool:
    """True if this CPU has native bf16 arithmetic (AVX512-BF16 or AMX tiles), where bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return True
    try:  # fallback for torch builds without the private helpers
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` "model name", else ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def uses_cuda(accelerator: str) -> bool:
    """Whether a run with this ``accelerator`` setting will run on CUDA GPUs."""
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def default_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` where the hardware supports it, else ``32-true``.

    Args:
        accelerator: the trainer's accelerator setting (``auto``, ``cpu``, ``gpu``, ``cuda``, ``mps``...).
    """
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if accelerator in ("auto", "cpu"):
        return "bf16-mixed" if cpu_has_bf16() else "32-true"
    return "32-true"


def resolve_precision(config: TrainerConfig) -> str:
    """The Lightning precision string of ``config`` (``auto`` resolved by :func:`default_precision`)."""
    return default_precision(config.accelerator) if config.precision == "auto" else config.precision


def world_size(config: TrainerConfig) -> int:
    """Processes of the run: devices per node × nodes (``devices: auto`` counts the visible GPUs, else 1)."""
    devices = config.devices
    if isinstance(devices, list):
        per_node = len(devices)
    elif isinstance(devices, int):
        per_node = devices
    elif str(devices).isdigit():
        per_node = int(devices)
    elif uses_cuda(config.accelerator):
        per_node = max(torch.cuda.device_count(), 1)
    else:
        per_node = 1
    return max(per_node, 1) * max(config.num_nodes, 1)


def step_optimizers(
    model: torch.nn.Module,
    optim: OptimConfig,
    schedule: ScheduleConfig,
    trainer: TrainerConfig,
    batch_size: int,
    pretrained: Sequence[str] = (),
) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns: the optimiser of ``optim`` (its learning rate scaled
    to the global batch, ``batch_size`` × processes × accumulated batches) and the per-step scheduler of ``schedule``.

    Args:
        model: the module whose ``requires_grad`` parameters are trained.
        optim: optimiser settings.
        schedule: learning-rate schedule over ``trainer.max_steps``.
        trainer: devices, nodes, accumulation and steps of the run.
        batch_size: images per process and micro-batch.
        pretrained: parameter-name prefixes of pre-trained parts (their own learning-rate multiplier).
    """
    global_batch = batch_size * world_size(trainer) * trainer.accumulate_grad_batches
    optimizer = build_optimizer(model, optim, global_batch_size=global_batch, pretrained=list(pretrained))
    scheduler = build_scheduler(optimizer, schedule, total_steps=trainer.max_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def effective_trainer_config(config: TrainerConfig) -> TrainerConfig:
    """``config`` with ``sync_batchnorm`` kept only under DDP on GPUs (plain BatchNorm elsewhere)."""
    sync = config.sync_batchnorm and uses_cuda(config.accelerator) and world_size(config) > 1
    if config.sync_batchnorm and not sync:
        rank_zero_only(logger.info)("trainer.sync_batchnorm applies to DDP on GPUs only; plain BatchNorm is used.")
    return dataclasses.replace(config, sync_batchnorm=sync)


def build_trainer(
    config: TrainerConfig,
    run_dir: RunDir | None = None,
    *,
    callbacks: Sequence[L.Callback] = (),
    grad_clip_norm: float | None = None,
    training: bool = True,
    csv_version: str = "",
) -> L.Trainer:
    """A ``lightning.Trainer`` for ``config``.

    Training adds: ``checkpoints/last.ckpt`` every ``checkpoint_every_n_steps`` (atomic writes; written again after
    a validation of the same step), ``snapshots/step<N>.ckpt`` every ``snapshot_every_n_steps``, RNG states in
    checkpoints, the non-finite gradient guard, TensorBoard + CSV loggers under ``logs/`` and a learning-rate
    monitor (``logs/tensorboard/``, ``logs/csv/metrics.csv``). Evaluation (``training=False``) logs nothing to disk and
    writes no checkpoint.

    Args:
        config: trainer settings.
        run_dir: the run directory (loggers and checkpoints); None: no loggers, no checkpoints.
        callbacks: extra callbacks.
        grad_clip_norm: clip the gradient norm to this value.
        training: build for ``fit`` (True) or for ``validate``/``predict`` (False).
        csv_version: sub-directory of ``logs/csv/`` for ``metrics.csv`` (Lightning's CSV logger replaces an
            existing file, so a resumed run writes its own).
    """
    all_callbacks: list[L.Callback] = list(callbacks)
    loggers: list = []
    if training:
        all_callbacks += [RNGStateCallback(), NonFiniteGradientGuard(), FiniteWeightsGuard()]
        if run_dir is not None:
            run_dir.create()
            all_callbacks.append(
                LastCheckpoint(
                    dirpath=run_dir.checkpoints,
                    filename="step{step:08d}",
                    save_top_k=0,
                    save_last=True,
                    enable_version_counter=False,  # always last.ckpt, also in a moved run directory (no last-v1)
                    every_n_train_steps=config.checkpoint_every_n_steps or config.max_steps,
                    save_on_train_epoch_end=False,
                )
            )
            if config.snapshot_every_n_steps:
                all_callbacks.append(
                    ModelCheckpoint(
                        dirpath=run_dir.snapshots,
                        filename="step{step:08d}",
                        auto_insert_metric_name=False,
                        save_top_k=-1,
                        save_weights_only=True,
                        enable_version_counter=False,
                        every_n_train_steps=config.snapshot_every_n_steps,
                        save_on_train_epoch_end=False,
                    )
                )
            loggers = [
                TensorBoardLogger(save_dir=str(run_dir.logs), name="tensorboard", version="", default_hp_metric=False),
                CSVLogger(save_dir=str(run_dir.logs), name="csv", version=csv_version),
            ]
            all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    # We shard the data ourselves (step-indexed training sampler, unrepeated evaluation shards): see datamodule.py.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers which may be a bottleneck.*")
    # Evaluation metrics are reduced by DenseModule itself (metric states are SUM-reduced), not by self.log.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    # Lightning 2.6's own use of a deprecated torch pytree API, printed in every run; nothing a user can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    precision = resolve_precision(config)
    try:
        return L.Trainer(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=precision,  # type: ignore[arg-type]
            max_steps=config.max_steps if training else -1,
            max_epochs=-1 if training else None,
            # Batch-based validation over the single long epoch; without an interval, none during fit (the caller
            # validates the final weights).
            val_check_interval=(config.val_every_n_steps or config.max_steps + 1) * config.accumulate_grad_batches,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            log_every_n_steps=config.log_every_n_steps,
            accumulate_grad_batches=config.accumulate_grad_batches,
            gradient_clip_val=grad_clip_norm,
            deterministic=config.deterministic,
            sync_batchnorm=effective_trainer_config(config).sync_batchnorm,
            enable_progress_bar=config.progress_bar,
            enable_model_summary=training,
            enable_checkpointing=training and run_dir is not None,
            logger=loggers if loggers else False,
            callbacks=all_callbacks,
            use_distributed_sampler=False,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run_dir.root) if run_dir is not None else None,
        )
    except (MisconfigurationException, TypeError, ValueError) as err:  # Lightning's checks of devices/accelerator
        raise ConfigError(
            f"trainer.accelerator={config.accelerator!r} trainer.devices={config.devices!r} "
            f"trainer.strategy={config.strategy!r}: {err} This machine has {torch.cuda.device_count()} CUDA GPU(s); "
            "use trainer.accelerator=cpu (or auto) and trainer.devices as a count (e.g. 1, 2), a list of ids or auto."
        ) from err

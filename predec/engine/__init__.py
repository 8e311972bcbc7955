"""The Lightning engine of dense training and evaluation and the one run engine both dense and pre-training runs use.

- :mod:`~predec.engine.run_dir`: one directory per run (config, checkpoints, metrics, logs).
- :mod:`~predec.engine.checkpoint`: atomic, checksummed checkpoint writes (the previous one kept), RNG state for exact
  resume, safe reading.
- :mod:`~predec.engine.guards`: stop on a NaN/Inf loss or gradient, naming the step.
- :mod:`~predec.engine.trainer`: the ``lightning.Trainer`` from the config (precision, devices, loggers).
- :mod:`~predec.engine.datamodule`: datasets and deterministic step-indexed sampling.
- :mod:`~predec.engine.dense`: the LightningModule (model, losses, metrics, test-time inference).
- :mod:`~predec.engine.run`: the one run engine (``fit_run``) of dense and pre-training runs: lock, resume,
  status, config, trainer, final checkpoint, metrics.
- :mod:`~predec.engine.dense_runs`: ``train_dense``, ``evaluate_dense``.
- :mod:`~predec.engine.dense_checkpoint`: ``load_dense_checkpoint``, ``load_inference_module``.
"""

from predec.engine.checkpoint import AtomicCheckpointIO, CorruptCheckpointError, RNGStateCallback, read_checkpoint
from predec.engine.datamodule import DenseDataModule, StepBatchSampler
from predec.engine.dense import DenseModule, build_model
from predec.engine.dense_checkpoint import (
    DenseCheckpoint,
    inference_config,
    load_dense_checkpoint,
    load_inference_module,
)
from predec.engine.dense_runs import evaluate_dense, train_dense
from predec.engine.guards import NonFiniteGradientGuard, NonFiniteLossError, check_finite_loss
from predec.engine.run import RunExistsError, RunResult, fit_run, resolve_resume
from predec.engine.run_dir import RunDir
from predec.engine.trainer import build_trainer, default_precision, resolve_precision

__all__ = [
    "AtomicCheckpointIO",
    "CorruptCheckpointError",
    "DenseCheckpoint",
    "DenseDataModule",
    "DenseModule",
    "NonFiniteGradientGuard",
    "NonFiniteLossError",
    "RNGStateCallback",
    "RunDir",
    "RunExistsError",
    "RunResult",
    "StepBatchSampler",
    "build_model",
    "build_trainer",
    "check_finite_loss",
    "default_precision",
    "evaluate_dense",
    "fit_run",
    "inference_config",
    "load_dense_checkpoint",
    "load_inference_module",
    "read_checkpoint",
    "resolve_precision",
    "resolve_resume",
    "train_dense",
]

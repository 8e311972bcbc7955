"""The Lightning engine of dense training and evaluation (and the pieces the pre-training engine reuses).

- :mod:`~predec.engine.run_dir`: one directory per run (config, checkpoints, metrics, logs).
- :mod:`~predec.engine.checkpoint`: atomic, checksummed checkpoint writes (the previous one kept), RNG state for exact
  resume, safe reading.
- :mod:`~predec.engine.guards`: stop on a NaN/Inf loss or gradient, naming the step.
- :mod:`~predec.engine.trainer`: the ``lightning.Trainer`` from the config (precision, devices, loggers).
- :mod:`~predec.engine.datamodule`: datasets and deterministic step-indexed sampling.
- :mod:`~predec.engine.dense`: the LightningModule (model, losses, metrics, test-time inference).
- :mod:`~predec.engine.runner`: ``train_dense``, ``evaluate_dense``, ``load_dense_checkpoint``,
  ``load_inference_module``.
"""

from predec.engine.checkpoint import AtomicCheckpointIO, CorruptCheckpointError, RNGStateCallback, read_checkpoint
from predec.engine.datamodule import DenseDataModule, StepBatchSampler
from predec.engine.dense import DenseModule, build_model
from predec.engine.guards import NonFiniteGradientGuard, NonFiniteLossError, check_finite_loss
from predec.engine.run_dir import RunDir
from predec.engine.runner import (
    DenseCheckpoint,
    RunExistsError,
    TrainResult,
    evaluate_dense,
    inference_config,
    load_dense_checkpoint,
    load_inference_module,
    resolve_resume,
    train_dense,
)
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
    "StepBatchSampler",
    "TrainResult",
    "build_model",
    "build_trainer",
    "check_finite_loss",
    "default_precision",
    "evaluate_dense",
    "inference_config",
    "load_dense_checkpoint",
    "load_inference_module",
    "read_checkpoint",
    "resolve_precision",
    "resolve_resume",
    "train_dense",
]

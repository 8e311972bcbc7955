"""Pre-training runs from Python: :func:`run_pretraining` (``predec pretrain``, the zoo builds, the demo).

The run goes through the one run engine (:func:`predec.engine.run.fit_run`); this module only says which module and
data a method trains and what its run writes: SSL methods ``weights.safetensors`` (``student.*`` / ``teacher.*``
encoder and decoder), ``supervised`` ``classifier.safetensors`` (timm layout) with the held-out top-1 accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from predec.allocator import tune_glibc
from predec.engine.datamodule import EvalStepDataModule, StepDataModule
from predec.engine.run import RunResult, fit_run
from predec.engine.run_dir import RunDir
from predec.models.weights import save_state_dict
from predec.pretrain.config import PretrainConfig, check_pretrain_config
from predec.pretrain.data import classification_datasets, ssl_dataset
from predec.pretrain.decon import DeConModule
from predec.pretrain.supervised import ClassificationModule

WEIGHTS_FILE = "weights.safetensors"


def build_module(config: PretrainConfig, build_weights: bool = True) -> L.LightningModule:
    """The LightningModule of ``config.method``: :class:`~predec.pretrain.decon.DeConModule` (SlotCon, DeCon) or
    :class:`~predec.pretrain.supervised.ClassificationModule`."""
    if config.method == "supervised":
        return ClassificationModule(config, build_weights=build_weights)
    return DeConModule(config, build_weights=build_weights)


def build_datamodule(config: PretrainConfig) -> StepDataModule:
    """The data of ``config.method`` (two-view crops, or classification crops with a held-out split)."""
    data, trainer = config.data, config.trainer
    common = dict(
        batch_size=data.batch_size,
        seed=config.seed,
        max_steps=trainer.max_steps,
        accumulate_grad_batches=trainer.accumulate_grad_batches,
        num_workers=data.num_workers,
    )
    if config.method == "supervised":
        return EvalStepDataModule(
            lambda: classification_datasets(data, train=True),
            val_set=lambda: classification_datasets(data, train=False),
            eval_batch_size=data.eval_batch_size,
            **common,
        )
    return StepDataModule(lambda: ssl_dataset(data), **common)


def run_pretraining(
    config: PretrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> RunResult:
    """Pre-train (or resume) as ``config`` says and write the results into the run directory.

    Writes ``config.yaml``, ``status.json``, ``checkpoints/last.ckpt`` (Lightning: student, teacher, heads,
    optimiser, scheduler, RNG), ``logs/`` (TensorBoard + CSV), ``metrics.json`` and the weights: SSL methods
    ``weights.safetensors`` (``student.*`` / ``teacher.*`` encoder and decoder, a weight source for
    ``create_model``), ``supervised`` ``classifier.safetensors`` (timm layout) with the held-out top-1 accuracy.
    An interrupted run directory is resumed automatically (same config apart from
    :data:`predec.config.RUNTIME_KEYS`).

    Raises:
        NonFiniteLossError: the loss or a gradient became NaN/Inf (status ``failed``; the last checkpoint is kept).
        RunExistsError: the run directory holds a finished run and ``overwrite`` is False.
        ConfigError / ValueError: contradictory settings (checked before the run directory is touched), a decoder
            without usable levels, a foreign checkpoint.
    """
    check_pretrain_config(config)
    tune_glibc()  # a no-op under the caching allocator the CLI preloads
    run = RunDir(run_dir or Path(config.output_dir) / config.name)
    supervised = config.method == "supervised"

    def build(checkpoint: Path | None) -> tuple[L.LightningModule, StepDataModule]:
        return build_module(config, build_weights=checkpoint is None), build_datamodule(config)

    def finish(trainer: L.Trainer, module: Any) -> dict[str, Any]:
        metrics: dict[str, Any] = {"method": config.method, "step": trainer.global_step}
        if not trainer.is_global_zero:
            return metrics
        if supervised:
            return {**metrics, **module.write_outputs(run.root)}
        weights = save_state_dict(module.pretrained_state_dict(), run.root / WEIGHTS_FILE)
        levels = ["encoder"] * (module.alpha > 0) + list(module.levels)
        return {**metrics, **module.loss_summary(), "weights": str(weights), "levels": levels}

    return fit_run(
        run,
        config,
        config.trainer,
        build=build,
        finish=finish,
        resume=resume,
        overwrite=overwrite,
        callbacks=callbacks,
        grad_clip_norm=config.optim.grad_clip_norm,
        validate_at_end=lambda module, step: supervised,
    )

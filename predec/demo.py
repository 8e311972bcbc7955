"""``predec demo``: pre-train, fine-tune and compare dense models on the embedded synthetic benchmark.

The demo is a small graph of **stages**, each run in its own directory under ``<out>/stages/``:

- ``classification/<backbone>``: supervised pre-training of a timm backbone on SynthObjects (the offline stand-in for
  an ImageNet classifier) → timm-style weights + top-1 accuracy;
- ``ssl/<method>``: SlotCon, DeCon-SL or DeCon-ML on unlabeled SynthScenes → a pre-training checkpoint;
- ``finetune/<task>/<variant>/seed<k>``: one dense fine-tuning run (``predec.engine.runner.train_dense``) on a small
  labelled split, evaluated on a held-out split.

A finished stage writes ``done.json`` (its settings, outputs, time); a later run with the same settings reuses it and
says so. A failing stage writes ``failed.json`` (the error); the stages that need its output are marked failed with
the reason, the others still run. After Ctrl-C the next run resumes: finished stages are reused and an interrupted
fine-tuning run continues from its checkpoint. Stages run in ``workers`` processes of ``threads_per_worker`` threads.
The results (``results.json``), the report (``report.md``) and figures are written at the end of every run.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predec.config import ConfigError, load_config, to_dict

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("segmentation", "depth")
SSL_METHODS: tuple[str, ...] = ("slotcon", "decon-sl", "decon-ml")
CLASSIFICATION = "classification"
NUM_SCENE_CLASSES = 6  # len(predec.data.synthetic.SCENE_CLASSES); checked in finetune_config
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("mIoU", "aAcc"),
    "depth": ("abs_rel", "rmse", "d1"),
}
"""Metrics kept per task (names of the engine's metrics.json)."""
HIGHER_IS_BETTER: dict[str, bool] = {"mIoU": True, "aAcc": True, "abs_rel": False, "rmse": False, "d1": True}
NOISE_FACTOR = 2.0
"""A difference exceeds the noise if ``|mean_a − mean_b| > NOISE_FACTOR × pooled std`` (pooled over seeds)."""


# --------------------------------------------------------------------------------------------------------------
# Variants and comparisons
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A fine-tuned model of the comparison.

    Attributes:
        name: identifier (directory names, tables).
        arch: dense architecture (``xnet``, ``fpn``, ``unet``).
        description: one line for the report.
        encoder_source: where the encoder weights come from: ``classification``, an SSL method, or None (random).
        decoder_source: where the decoder weights come from: ``classification`` (the ×Net decoder backbone), an
            SSL method (the whole pre-trained decoder), or None (random).
    """

    name: str
    arch: str
    description: str
    encoder_source: str | None
    decoder_source: str | None

    @property
    def sources(self) -> tuple[str, ...]:
        """The pre-training stages' kinds this variant needs (without repetition)."""
        return tuple(dict.fromkeys(s for s in (self.encoder_source, self.decoder_source) if s))


VARIANTS: tuple[Variant, ...] = (
    Variant("xnet_pt_dec", "xnet", "×Net, pre-trained encoder × pre-trained decoder", CLASSIFICATION, CLASSIFICATION),
    Variant("xnet_rand_dec", "xnet", "×Net, pre-trained encoder × random decoder", CLASSIFICATION, None),
    Variant("fpn_pt_enc", "fpn", "FPN, pre-trained encoder, random decoder", CLASSIFICATION, None),
    Variant("unet_pt_enc", "unet", "U-Net, pre-trained encoder, random decoder", CLASSIFICATION, None),
    Variant("fpn_decon_ml", "fpn", "FPN, encoder + decoder from DeCon-ML", "decon-ml", "decon-ml"),
    Variant("fpn_decon_sl", "fpn", "FPN, encoder + decoder from DeCon-SL", "decon-sl", "decon-sl"),
    Variant("fpn_slotcon", "fpn", "FPN, encoder from SlotCon, random decoder", "slotcon", None),
    Variant("fpn_scratch", "fpn", "FPN, no pre-training", None, None),
)
VARIANT_NAMES: tuple[str, ...] = tuple(v.name for v in VARIANTS)

COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("xnet_pt_dec", "xnet_rand_dec", "×Net: pre-trained vs random decoder"),
    ("fpn_decon_ml", "fpn_slotcon", "FPN: DeCon-ML (encoder + decoder) vs SlotCon (encoder only)"),
    ("fpn_decon_sl", "fpn_slotcon", "FPN: DeCon-SL (encoder + decoder) vs SlotCon (encoder only)"),
    ("xnet_pt_dec", "fpn_pt_enc", "pre-trained ×Net decoder vs random FPN decoder (same encoder)"),
    ("fpn_pt_enc", "fpn_scratch", "FPN: pre-trained vs random encoder"),
)
"""The decisive comparisons ``(variant a, variant b, question)``: the report says whether a − b exceeds the noise."""


def variant(name: str) -> Variant:
    """The variant called ``name``.

    Raises:
        ConfigError: unknown name (the valid ones are listed).
    """
    for v in VARIANTS:
        if v.name == name:
            return v
    raise ConfigError(f"Unknown demo variant {name!r}; valid: {', '.join(VARIANT_NAMES)}.")


# --------------------------------------------------------------------------------------------------------------
# Settings (YAML: predec/configs/demo/{quick,full}.yaml)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ClassificationSettings:
    """Supervised pre-training of the backbones on SynthObjects.

    Attributes:
        num_train: training images.
        num_val: held-out images (the reported top-1 accuracy).
        image_size: side of the object images, pixels.
        label_mode: ``shape`` (4 classes) or ``shape_texture`` (16 classes).
        crop_scale: RandomResizedCrop area range of the training crops (a small range keeps the object whole).
        max_steps: optimiser steps.
        batch_size: images per step.
        lr: AdamW learning rate.
        overrides: extra ``key=value`` settings passed to the pre-training function.
    """

    num_train: int = 5000
    num_val: int = 400
    image_size: int = 48
    label_mode: str = "shape"
    crop_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    max_steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    overrides: list[str] = field(default_factory=list)


@dataclass
class SSLSettings:
    """Self-supervised pre-training (SlotCon, DeCon-SL, DeCon-ML) on unlabeled SynthScenes.

    Attributes:
        num_images: unlabeled scenes (distinct from the fine-tuning and evaluation scenes).
        image_size: rendered scene side, pixels.
        view_size: side of the two augmented views, pixels.
        max_steps: optimiser steps.
        batch_size: images per step.
        num_prototypes: SlotCon prototypes K.
        dim: projector output dimension.
        hidden_dim: projector hidden dimension.
        lr: AdamW learning rate.
        encoder_from_classification: start the SSL encoder from the classification-pretrained backbone (isolates
            the decoder's pre-training: every SSL method then starts from the same encoder).
        overrides: extra ``key=value`` overrides of the pre-training recipe.
    """

    num_images: int = 256
    image_size: int = 64
    view_size: int = 48
    max_steps: int = 30
    batch_size: int = 16
    num_prototypes: int = 16
    dim: int = 64
    hidden_dim: int = 256
    encoder_from_classification: bool = True
    lr: float = 5e-4
    overrides: list[str] = field(default_factory=list)


@dataclass
class FinetuneSettings:
    """Dense fine-tuning and evaluation.

    Attributes:
        tasks: ``segmentation`` and/or ``depth``.
        variants: names of :data:`VARIANTS` to train.
        seeds: fine-tuning seeds (model init, data order); every variant runs with each.
        num_train: labelled training scenes (small, so that pre-training matters).
        num_val: held-out evaluation scenes.
        image_size: scene size [H, W].
        max_steps: optimiser steps.
        batch_size: images per step.
        lr: AdamW learning rate.
        grid_images: evaluation images shown in the prediction grids.
        keep_models: keep each variant's fine-tuned model (first seed, ``run/model``, 50-100 MB each); otherwise
            only metrics, logs and the grid predictions stay.
        overrides: extra ``key=value`` overrides of every fine-tuning recipe (``predec.config.DenseConfig``).
    """

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    variants: list[str] = field(default_factory=lambda: list(VARIANT_NAMES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_train: int = 128
    num_val: int = 100
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    max_steps: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    grid_images: int = 4
    keep_models: bool = False
    overrides: list[str] = field(default_factory=lambda: ["loss.silog_lambda=0.0"])


@dataclass
class DemoConfig:
    """Settings of ``predec demo``. The defaults are those of ``predec/configs/demo/full.yaml`` (tested).

    Attributes:
        name: ``quick`` or ``full`` (shown in the report).
        encoder: timm backbone of every encoder.
        decoder: timm backbone of the ×Net decoder.
        fpn_channels: width of every FPN (the DeCon-pre-trained ones and the fine-tuned ones; detectron2: 256).
        data_seed: seed of the generated data sets (objects, unlabeled, labelled and evaluation scenes).
        workers: stages run in parallel processes (1: in this process, with progress bars).
        threads_per_worker: torch threads of each worker.
        classification: supervised backbone pre-training.
        ssl: self-supervised pre-training.
        finetune: dense fine-tuning and evaluation.
    """

    name: str = "full"
    encoder: str = "resnet18"
    decoder: str = "resnet18"
    fpn_channels: int = 128
    data_seed: int = 0
    workers: int = 2
    threads_per_worker: int = 1
    classification: ClassificationSettings = field(default_factory=ClassificationSettings)
    ssl: SSLSettings = field(default_factory=SSLSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)


def config_path(name: str) -> Path:
    """The shipped demo settings ``predec/configs/demo/<name>.yaml``."""
    from predec.config import recipes_dir

    return recipes_dir() / "demo" / f"{name}.yaml"


def load_demo_config(source: str | Path, overrides: Sequence[str] = ()) -> DemoConfig:
    """Load demo settings (``quick``, ``full`` or a YAML file) with ``key=value`` overrides, validated.

    Raises:
        ConfigError: unknown keys, wrong types, unknown tasks or variants, no seeds.
    """
    path = Path(source)
    if not path.is_file():
        path = config_path(str(source))
        if not path.is_file():
            shipped = sorted(p.stem for p in config_path("x").parent.glob("*.yaml"))
            raise ConfigError(f"Demo settings {str(source)!r} not found; shipped: {', '.join(shipped)}, or a file.")
    config = load_config(path, overrides, schema=DemoConfig)
    for task in config.finetune.tasks:
        if task not in TASKS:
            raise ConfigError(f"{path}: finetune.tasks holds {task!r}; valid tasks: {', '.join(TASKS)}.")
    for name in config.finetune.variants:
        variant(name)
    if not config.finetune.seeds:
        raise ConfigError(f"{path}: finetune.seeds is empty; give at least one seed.")
    if config.fpn_channels < 1:
        raise ConfigError(f"{path}: fpn_channels={config.fpn_channels}: need a width >= 1 (detectron2: 256).")
    scale = list(config.classification.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(
            f"{path}: classification.crop_scale={list(config.classification.crop_scale)}: need [low, high] with "
            "0 < low <= high <= 1 (area fractions of the training crops)."
        )
    if config.workers < 1 or config.threads_per_worker < 1:
        raise ConfigError(
            f"{path}: workers={config.workers}, threads_per_worker={config.threads_per_worker}: need >= 1."
        )
    return config


# --------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------


class StageUnavailableError(RuntimeError):
    """A stage whose implementation is not part of this installation."""


@dataclass
class Stage:
    """One unit of work of the demo.

    Attributes:
        name: ``classification/resnet18``, ``ssl/decon-ml``, ``finetune/depth/fpn_scratch/seed0``.
        kind: ``classification``, ``ssl`` or ``finetune``.
        spec: the stage's settings (JSON-safe); a cached result is reused only if they are equal.
        needs: names of the stages whose outputs it uses.
        keep_model: keep the fine-tuned model's weights (``run/model``); others keep only metrics and logs.
    """

    name: str
    kind: str
    spec: dict[str, Any]
    needs: tuple[str, ...] = ()
    keep_model: bool = True


def classification_stage_name(backbone: str) -> str:
    return f"{CLASSIFICATION}/{backbone}"


def ssl_stage_name(method: str) -> str:
    return f"ssl/{method}"


def finetune_stage_name(task: str, variant_name: str, seed: int) -> str:
    return f"finetune/{task}/{variant_name}/seed{seed}"


def plan(config: DemoConfig) -> list[Stage]:
    """The stages of a demo run, in dependency order (only those the chosen variants need)."""
    chosen = [variant(n) for n in config.finetune.variants]
    sources = {s for v in chosen for s in v.sources}
    cls = config.classification
    stages: list[Stage] = []
    backbones = []
    if CLASSIFICATION in sources or (sources & set(SSL_METHODS) and config.ssl.encoder_from_classification):
        backbones.append(config.encoder)
    if any(v.decoder_source == CLASSIFICATION for v in chosen) and config.decoder not in backbones:
        backbones.append(config.decoder)
    for backbone in backbones:
        spec = {"backbone": backbone, "data_seed": config.data_seed, **to_dict(cls)}
        stages.append(Stage(classification_stage_name(backbone), CLASSIFICATION, spec))
    for method in SSL_METHODS:
        if method not in sources:
            continue
        needs = (classification_stage_name(config.encoder),) if config.ssl.encoder_from_classification else ()
        spec = {
            "method": method,
            "encoder": config.encoder,
            "fpn_channels": None if method == "slotcon" else config.fpn_channels,
            "data_seed": config.data_seed,
            **to_dict(config.ssl),
        }
        stages.append(Stage(ssl_stage_name(method), "ssl", spec, needs))
    for task in config.finetune.tasks:
        for v in chosen:
            needs = tuple(dict.fromkeys(_source_stage(config, v, s) for s in v.sources))
            for seed in config.finetune.seeds:
                spec = {"task": task, "variant": v.name, "seed": seed, "config": _finetune_settings(config, task, v)}
                keep = config.finetune.keep_models and seed == config.finetune.seeds[0]
                stages.append(Stage(finetune_stage_name(task, v.name, seed), "finetune", spec, needs, keep))
    return stages


def _source_stage(config: DemoConfig, v: Variant, source: str) -> str:
    if source == CLASSIFICATION:
        return classification_stage_name(config.encoder)
    return ssl_stage_name(source)


def _finetune_settings(config: DemoConfig, task: str, v: Variant) -> dict[str, Any]:
    """The stage spec of a fine-tuning run: everything but the weight paths, which come from the needed stages."""
    ft = config.finetune
    return {
        "arch": v.arch,
        "encoder": config.encoder,
        "decoder": config.decoder if v.arch == "xnet" else None,
        "fpn_channels": config.fpn_channels if v.arch == "fpn" else None,
        "encoder_source": v.encoder_source,
        "decoder_source": v.decoder_source,
        "data_seed": config.data_seed,
        **to_dict(ft),
        "tasks": None,
        "variants": None,
        "seeds": None,
        "keep_models": None,
    }


def finetune_config(spec: dict[str, Any], weights: dict[str, str | None], run_dir: Path, progress_bar: bool) -> Any:
    """The :class:`predec.config.DenseConfig` of a fine-tuning stage.

    Args:
        spec: the stage spec (see :func:`plan`).
        weights: ``{"encoder": path | None, "decoder": path | None}`` from the pre-training stages.
        run_dir: the stage's run directory.
        progress_bar: show Lightning's progress bar.
    """
    from predec.config import DenseConfig
    from predec.data.synthetic import SCENE_CLASSES

    assert len(SCENE_CLASSES) == NUM_SCENE_CLASSES
    s, task = spec["config"], spec["task"]
    model: dict[str, Any] = {
        "arch": s["arch"],
        "encoder": s["encoder"],
        "decoder": s["decoder"],
        "task": task,
        "encoder_weights": weights.get("encoder"),
        "decoder_weights": weights.get("decoder"),
    }
    if s.get("fpn_channels"):
        model["decoder_kwargs"] = {"channels": s["fpn_channels"]}
    model.update({"num_classes": NUM_SCENE_CLASSES} if task == "segmentation" else {"max_depth": 10.0})
    recipe = {
        "name": run_dir.name,
        "output_dir": str(run_dir.parent),
        "seed": spec["seed"],
        "model": model,
        "data": {
            "dataset": "synth",
            "num_train": s["num_train"],
            "num_val": s["num_val"],
            "image_size": s["image_size"],
            "synth_seed": _labelled_seed(s["data_seed"]),
            "batch_size": s["batch_size"],
            "eval_batch_size": 50,
        },
        "optim": {"name": "adamw", "lr": s["lr"], "weight_decay": 0.01},
        "schedule": {"name": "poly", "warmup_steps": max(1, s["max_steps"] // 10), "warmup_ratio": 0.01},
        "trainer": {
            "precision": "auto",
            "max_steps": s["max_steps"],
            "val_every_n_steps": None,
            "checkpoint_every_n_steps": s["max_steps"],  # the demo resumes per stage; one write per run
            "log_every_n_steps": max(1, min(10, s["max_steps"] // 10)),
            "progress_bar": progress_bar,
        },
        "eval": {"min_depth": 1e-3, "max_depth": 10.0},
    }
    return load_config(recipe, s["overrides"], schema=DenseConfig)


def _labelled_seed(data_seed: int) -> int:
    """Generator seed of the labelled scenes (evaluation scenes: +1); unlabeled SSL scenes use ``+ 100``."""
    return 1000 * data_seed + 10


# --------------------------------------------------------------------------------------------------------------
# Stage execution (runs in a worker process or in the main process)
# --------------------------------------------------------------------------------------------------------------


def execute_stage(
    stage: Stage, stage_dir: Path, inputs: dict[str, dict[str, Any]], threads: int, progress: bool
) -> dict[str, Any]:
    """Run one stage and return its outputs (JSON-safe). Used in worker processes: arguments are picklable.

    Args:
        stage: the stage.
        stage_dir: its directory.
        inputs: outputs of the stages it needs, by name.
        threads: torch threads.
        progress: show progress bars.
    """
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_lightning()
    stage_dir.mkdir(parents=True, exist_ok=True)
    runner: Callable[..., dict[str, Any]] = {
        CLASSIFICATION: _run_classification,
        "ssl": _run_ssl,
        "finetune": _run_finetune,
    }[stage.kind]
    if progress:
        return runner(stage, stage_dir, inputs, progress)
    # A worker process: its output (Lightning's summaries, warnings) goes to the stage's log file, not the terminal.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(stage_dir / "output.log", "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            return runner(stage, stage_dir, inputs, progress)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Total Flops.*")


def _pretrain_api() -> tuple[Any, Callable[..., Any]]:
    try:
        from predec.pretrain.module import PretrainConfig, run_pretraining
    except ImportError as err:
        raise StageUnavailableError(f"the pre-training engine is not available in this installation ({err})") from err
    return PretrainConfig, run_pretraining


def classification_recipe(spec: dict[str, Any], run_dir: Path, progress_bar: bool) -> dict[str, Any]:
    """The ``predec pretrain`` recipe (method ``supervised``) of a classification stage."""
    size = spec["image_size"]
    return {
        "name": run_dir.name,
        "output_dir": str(run_dir.parent),
        "seed": 0,
        "method": "supervised",
        "model": {"encoder": spec["backbone"]},
        "data": {
            "dataset": "synth_objects",
            "num_train": spec["num_train"],
            "num_val": spec["num_val"],
            "image_size": [size, size],
            "synth_seed": 1000 * spec["data_seed"] + 20,
            "reader_kwargs": {"label_mode": spec["label_mode"]},
            "view_size": size,
            "crop_scale": list(spec["crop_scale"]),
            "batch_size": spec["batch_size"],
            "eval_batch_size": 100,
        },
        "optim": {"name": "adamw", "lr": spec["lr"], "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_steps": max(1, spec["max_steps"] // 10), "warmup_ratio": 0.01},
        "trainer": _trainer_settings(spec["max_steps"], progress_bar),
    }


def ssl_recipe(spec: dict[str, Any], encoder_weights: str | None, run_dir: Path, progress_bar: bool) -> dict:
    """The ``predec pretrain`` recipe of a SlotCon / DeCon-SL / DeCon-ML stage (an FPN decoder for DeCon)."""
    method = spec["method"]
    return {
        "name": run_dir.name,
        "output_dir": str(run_dir.parent),
        "seed": 0,
        "method": method,
        "model": {
            "arch": None if method == "slotcon" else "fpn",
            "encoder": spec["encoder"],
            "encoder_weights": encoder_weights,
            "decoder_kwargs": {} if method == "slotcon" else {"channels": spec["fpn_channels"]},
        },
        "ssl": {"num_prototypes": spec["num_prototypes"], "hidden_dim": spec["hidden_dim"], "out_dim": spec["dim"]},
        "data": {
            "dataset": "synth_scenes",
            "num_train": spec["num_images"],
            "image_size": [spec["image_size"], spec["image_size"]],
            "synth_seed": 1000 * spec["data_seed"] + 100,
            "view_size": spec["view_size"],
            "crop_scale": [0.2, 1.0],
            "batch_size": spec["batch_size"],
        },
        "optim": {"name": "adamw", "lr": spec["lr"], "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": max(1, spec["max_steps"] // 10), "warmup_ratio": 0.01},
        "trainer": _trainer_settings(spec["max_steps"], progress_bar),
    }


def _trainer_settings(max_steps: int, progress_bar: bool) -> dict[str, Any]:
    return {
        "precision": "auto",
        "max_steps": max_steps,
        "val_every_n_steps": None,
        "checkpoint_every_n_steps": max_steps,  # the demo resumes per stage; one write per run
        "log_every_n_steps": max(1, min(10, max_steps // 10)),
        "progress_bar": progress_bar,
    }


def _run_classification(stage: Stage, stage_dir: Path, inputs: dict, progress: bool) -> dict[str, Any]:
    schema, run_pretraining = _pretrain_api()
    run_dir = stage_dir / "run"
    recipe = classification_recipe(stage.spec, run_dir, progress)
    config = load_config(recipe, stage.spec["overrides"], schema=schema)
    result = run_pretraining(config, run_dir, overwrite=True)
    shutil.rmtree(result.run_dir.checkpoints, ignore_errors=True)
    metrics = result.metrics
    return {
        "weights": metrics["classifier"],
        "accuracy": float(metrics["top1"]),
        "num_classes": len(metrics.get("classes", [])),
        "steps": result.step,
        "loss_first": metrics.get("loss_first"),
        "loss_last": metrics.get("loss_last"),
        "csv": _csv_log(result.run_dir),
    }


def _run_ssl(stage: Stage, stage_dir: Path, inputs: dict, progress: bool) -> dict[str, Any]:
    schema, run_pretraining = _pretrain_api()
    run_dir = stage_dir / "run"
    encoder_weights = next((out["weights"] for out in inputs.values() if "weights" in out), None)
    recipe = ssl_recipe(stage.spec, encoder_weights, run_dir, progress)
    config = load_config(recipe, stage.spec["overrides"], schema=schema)
    result = run_pretraining(config, run_dir, overwrite=True)
    shutil.rmtree(result.run_dir.checkpoints, ignore_errors=True)
    metrics = result.metrics
    return {
        "checkpoint": metrics["weights"],
        "initial_loss": metrics.get("loss_first"),
        "final_loss": metrics.get("loss_last"),
        "steps": result.step,
        "csv": _csv_log(result.run_dir),
    }


def _csv_log(run: Any) -> str:
    """The first CSV log of a run directory ("" if none)."""
    return str(next(iter(sorted(run.logs.glob("csv/**/metrics.csv"))), ""))


def _weights_of(spec: dict[str, Any], inputs: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """Encoder / decoder weight specs of a fine-tuning stage from the outputs of the stages it needs."""
    s = spec["config"]

    def source_weights(source: str | None, part: str) -> str | None:
        if source is None:
            return None
        if source == CLASSIFICATION:
            backbone = s["encoder"] if part == "encoder" else s["decoder"]
            return inputs[classification_stage_name(backbone)]["weights"]
        return inputs[ssl_stage_name(source)]["checkpoint"]

    return {
        "encoder": source_weights(s["encoder_source"], "encoder"),
        "decoder": source_weights(s["decoder_source"], "decoder"),
    }


def _run_finetune(stage: Stage, stage_dir: Path, inputs: dict, progress: bool) -> dict[str, Any]:
    from predec.engine.runner import train_dense

    run_dir = stage_dir / "run"
    config = finetune_config(stage.spec, _weights_of(stage.spec, inputs), run_dir, progress)
    started = time.perf_counter()
    result = train_dense(config, run_dir, overwrite=True)
    train_seconds = time.perf_counter() - started
    metrics = result.metrics["metrics"]
    task = stage.spec["task"]
    kept = {k: float(metrics[k]) for k in TASK_METRICS[task] if k in metrics}
    missing = [k for k in TASK_METRICS[task] if k not in metrics]
    if missing:
        raise KeyError(f"{result.run_dir.metrics_path} lacks the metrics {missing}; it has {sorted(metrics)}.")
    predictions = stage_dir / "predictions.npz"
    _save_predictions(result.run_dir.model_dir, config, stage.spec["config"]["grid_images"], predictions)
    shutil.rmtree(result.run_dir.checkpoints, ignore_errors=True)  # 3× the model's size; model/ keeps the weights
    if not stage.keep_model:
        shutil.rmtree(result.run_dir.model_dir, ignore_errors=True)
    return {
        "metrics": kept,
        "step": result.step,
        "train_seconds": train_seconds,
        "csv": _csv_log(result.run_dir),
        "predictions": str(predictions),
        "model_dir": str(result.run_dir.model_dir),
    }


def _save_predictions(model_dir: Path, config: Any, count: int, path: Path) -> None:
    """Predictions of the trained model on the first ``count`` evaluation scenes (for the prediction grids)."""
    import numpy as np
    import torch

    import predec
    from predec.data.transforms import eval_transform
    from predec.engine.datamodule import build_dataset

    if count <= 0:
        return
    dataset = build_dataset(config.data, train=False, transform=eval_transform())
    images = torch.stack([dataset[i]["image"].as_subclass(torch.Tensor) for i in range(min(count, len(dataset)))])
    model = predec.from_pretrained(model_dir)
    with torch.inference_mode():
        output = model.predict(images)
    if config.model.task == "segmentation":
        array = output.argmax(1).to(torch.uint8).numpy()
    else:
        array = output[:, 0].float().numpy().astype(np.float16)
    np.savez_compressed(path, prediction=array)


# --------------------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------------------

DONE, FAILED, CACHED, SKIPPED = "done", "failed", "cached", "skipped"


class Demo:
    """Runs the stages of a demo configuration in ``out`` and writes the results and the report.

    Args:
        config: the demo settings.
        out: the run directory.
        echo: where progress lines go (default: print to stdout).
    """

    def __init__(self, config: DemoConfig, out: str | Path, echo: Callable[[str], None] = print) -> None:
        self.config, self.out, self.echo = config, Path(out), echo
        self.stages = plan(config)
        self.states: dict[str, dict[str, Any]] = {}
        self._started = time.perf_counter()

    def _clock(self) -> str:
        """Elapsed time of this run, for progress lines (``[  42 s]``)."""
        return f"[{time.perf_counter() - self._started:5.0f} s]"

    def stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    # ---------------------------------------------------------------------------------------------- cache files
    def _fingerprint(self, stage: Stage) -> dict[str, Any]:
        """The stage's spec plus the finishing times of the stages it needs (a re-run input invalidates it)."""
        return {"spec": stage.spec, "inputs": {n: self.states[n].get("finished") for n in stage.needs}}

    def _cached(self, stage: Stage) -> dict[str, Any] | None:
        done = self.stage_dir(stage.name) / "done.json"
        if not done.is_file():
            return None
        record = json.loads(done.read_text())
        if record.get("fingerprint") != _jsonable(self._fingerprint(stage)):
            return None
        return record

    def _record(self, stage: Stage, state: str, **fields: Any) -> dict[str, Any]:
        from predec.engine.run_dir import write_json

        directory = self.stage_dir(stage.name)
        directory.mkdir(parents=True, exist_ok=True)
        record = {"stage": stage.name, "state": state, "fingerprint": _jsonable(self._fingerprint(stage)), **fields}
        if state == DONE:
            record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S") + f".{time.time_ns() % 10**9:09d}"
            (directory / "failed.json").unlink(missing_ok=True)
            write_json(directory / "done.json", record)
        else:
            (directory / "done.json").unlink(missing_ok=True)
            write_json(directory / "failed.json", record)
        return record

    def _prepare(self, stage: Stage) -> None:
        """Clear a stage directory whose content belongs to other settings (a stale or failed attempt is kept for
        resuming only if its settings are the same)."""
        directory = self.stage_dir(stage.name)
        attempt = directory / "attempt.json"
        fingerprint = _jsonable(self._fingerprint(stage))
        if directory.exists() and (not attempt.is_file() or json.loads(attempt.read_text()) != fingerprint):
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from predec.engine.run_dir import write_json

        write_json(attempt, fingerprint)

    # ------------------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Run (or reuse) every stage, then write ``results.json``, ``report.md`` and the figures.

        Returns:
            The results (as written to ``results.json``).

        Raises:
            KeyboardInterrupt: after recording what finished (the next run resumes from there).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        started = self._started = time.perf_counter()
        load_start = _load_average()
        total = len(self.stages)
        self.echo(
            f"predec demo ({self.config.name}): {total} stages in {self.out} — {self.config.workers} worker(s) × "
            f"{self.config.threads_per_worker} thread(s); load average {load_start}"
        )
        pending = list(self.stages)
        for stage in pending:
            cached = (
                self._cached(stage)
                if all(self.states.get(n, {}).get("state") in (DONE, CACHED) for n in stage.needs)
                else None
            )
            if cached is not None:
                self.states[stage.name] = {**cached, "state": CACHED}
        cached_names = [s.name for s in self.stages if self.states.get(s.name, {}).get("state") == CACHED]
        if cached_names:
            self.echo(f"Reusing {len(cached_names)} finished stage(s) from {self.out} (delete stages/<name> to redo):")
            for name in cached_names:
                self.echo(f"  cached  {name}")
        pending = [s for s in self.stages if s.name not in self.states]
        try:
            self._execute(pending, total)
        except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into SystemExit(1)
            self.echo(f"\nInterrupted. Finished stages are kept in {self.out}; run the same command to resume.")
            raise KeyboardInterrupt from err
        finally:
            seconds = time.perf_counter() - started
        from predec import report

        results = collect_results(self.config, self.stages, self.states, seconds, load_start, _load_average())
        paths = report.write_all(results, self.out)
        self.echo(report.summary_table(results))
        self.echo(f"Wrote {', '.join(str(p) for p in paths)} in {seconds:.0f} s.")
        return results

    def _ready(self, stage: Stage) -> bool | str:
        """True if every needed stage is done, a message if one failed, False if one is still to run."""
        for name in stage.needs:
            state = self.states.get(name, {}).get("state")
            if state in (FAILED, SKIPPED):
                return f"needs {name}, which failed: {self.states[name].get('error', '')}"
            if state not in (DONE, CACHED):
                return False
        return True

    def _inputs(self, stage: Stage) -> dict[str, dict[str, Any]]:
        return {n: self.states[n].get("outputs", {}) for n in stage.needs}

    def _finish(self, stage: Stage, outputs: dict | None, error: BaseException | None, seconds: float, count: str):
        if error is None:
            self.states[stage.name] = self._record(stage, DONE, outputs=outputs, seconds=seconds)
            self.echo(
                f"{self._clock()} [{count}] done    {stage.name} in {seconds:.0f} s{_outputs_line(outputs or {})}"
            )
        else:
            text = f"{type(error).__name__}: {error}"
            tb = (
                "".join(traceback.format_exception(error))[-4000:]
                if not isinstance(error, StageUnavailableError)
                else ""
            )
            self.states[stage.name] = self._record(stage, FAILED, error=text, traceback=tb, seconds=seconds)
            self.echo(f"{self._clock()} [{count}] FAILED  {stage.name} after {seconds:.0f} s: {text}")

    def _skip_blocked(self, waiting: list[Stage], finished: int, total: int) -> tuple[list[Stage], int]:
        still = []
        for stage in waiting:
            ready = self._ready(stage)
            if isinstance(ready, str):
                finished += 1
                self.states[stage.name] = self._record(stage, SKIPPED, error=ready, seconds=0.0)
                self.echo(f"{self._clock()} [{finished}/{total}] skipped {stage.name}: {ready}")
            else:
                still.append(stage)
        return still, finished

    def _execute(self, pending: list[Stage], total: int) -> None:
        finished = total - len(pending)
        workers, threads = self.config.workers, self.config.threads_per_worker
        if workers == 1:
            waiting = list(pending)
            while waiting:
                waiting, finished = self._skip_blocked(waiting, finished, total)
                if not waiting:
                    break
                stage = next(s for s in waiting if self._ready(s) is True)
                waiting.remove(stage)
                self.echo(f"{self._clock()} [{finished + 1}/{total}] start   {stage.name}")
                self._prepare(stage)
                started = time.perf_counter()
                try:
                    outputs, error = (
                        execute_stage(stage, self.stage_dir(stage.name), self._inputs(stage), threads, True),
                        None,
                    )
                except Exception as err:  # recorded; the other stages still run
                    outputs, error = None, err
                finished += 1
                self._finish(stage, outputs, error, time.perf_counter() - started, f"{finished}/{total}")
            return
        context = multiprocessing.get_context("spawn")
        running: dict[futures.Future, tuple[Stage, float]] = {}
        waiting = list(pending)
        with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            try:
                while waiting or running:
                    waiting, finished = self._skip_blocked(waiting, finished, total)
                    for stage in [s for s in waiting if self._ready(s) is True]:
                        if len(running) >= workers:
                            break
                        waiting.remove(stage)
                        self._prepare(stage)
                        self.echo(f"{self._clock()} [{finished + len(running) + 1}/{total}] start   {stage.name}")
                        args = (stage, self.stage_dir(stage.name), self._inputs(stage), threads, False)
                        running[pool.submit(execute_stage, *args)] = (stage, time.perf_counter())
                    if not running:
                        continue
                    done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for future in done:
                        stage, started = running.pop(future)
                        error = future.exception()
                        finished += 1
                        outputs = None if error else future.result()
                        self._finish(stage, outputs, error, time.perf_counter() - started, f"{finished}/{total}")
            except (KeyboardInterrupt, SystemExit):
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _outputs_line(outputs: dict[str, Any]) -> str:
    values = outputs.get("metrics") or {}
    if not values:
        return ""
    return ": " + ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, (int, float)))


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------------------------------------------
# Results and statistics
# --------------------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof=1``; None for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def compare(a: Sequence[float], b: Sequence[float], factor: float = NOISE_FACTOR) -> dict[str, Any]:
    """Does ``mean(a) − mean(b)`` exceed the seed noise?

    Rule: ``|Δmean| > factor × pooled std``, pooled std = ``sqrt(((n_a−1)·s_a² + (n_b−1)·s_b²) / (n_a+n_b−2))``
    over the per-seed values. Undecidable (``exceeds_noise`` None) with fewer than two seeds on each side.

    Returns:
        ``{"mean_a", "mean_b", "delta", "pooled_std", "exceeds_noise", "n_a", "n_b"}``.
    """
    mean_a, std_a = mean_std(a)
    mean_b, std_b = mean_std(b)
    delta = mean_a - mean_b
    pooled = None
    exceeds = None
    if std_a is not None and std_b is not None:
        pooled = math.sqrt(((len(a) - 1) * std_a**2 + (len(b) - 1) * std_b**2) / (len(a) + len(b) - 2))
        exceeds = abs(delta) > factor * pooled
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "delta": delta,
        "pooled_std": pooled,
        "exceeds_noise": exceeds,
        "n_a": len(a),
        "n_b": len(b),
    }


def collect_results(
    config: DemoConfig,
    stages: list[Stage],
    states: dict[str, dict[str, Any]],
    seconds: float,
    load_start: str,
    load_end: str,
) -> dict[str, Any]:
    """The content of ``results.json``: settings, stage states and times, pre-training results, per-variant metrics
    (per seed, mean, std) and the decisive comparisons."""
    from predec.engine.trainer import default_precision

    stage_records = {}
    for stage in stages:
        state = states.get(stage.name, {"state": "not run"})
        stage_records[stage.name] = {
            "kind": stage.kind,
            "state": state.get("state"),
            "seconds": state.get("seconds"),
            "error": state.get("error"),
            "outputs": state.get("outputs"),
        }
    pretraining: dict[str, Any] = {CLASSIFICATION: {}, "ssl": {}}
    for stage in stages:
        record = stage_records[stage.name]
        if stage.kind == CLASSIFICATION:
            pretraining[CLASSIFICATION][stage.spec["backbone"]] = record
        elif stage.kind == "ssl":
            pretraining["ssl"][stage.spec["method"]] = record
    variants: dict[str, dict[str, Any]] = {}
    for task in config.finetune.tasks:
        variants[task] = {}
        for name in config.finetune.variants:
            per_seed, errors = {}, {}
            for seed in config.finetune.seeds:
                record = stage_records[finetune_stage_name(task, name, seed)]
                if record["state"] in (DONE, CACHED):
                    per_seed[str(seed)] = record["outputs"]["metrics"]
                else:
                    errors[str(seed)] = record.get("error") or record["state"]
            entry: dict[str, Any] = {
                "description": variant(name).description,
                "state": "ok" if not errors else ("failed" if not per_seed else "partial"),
                "per_seed": per_seed,
                "errors": errors,
                "mean": {},
                "std": {},
            }
            for metric in TASK_METRICS[task]:
                values = [m[metric] for m in per_seed.values() if metric in m]
                if values:
                    entry["mean"][metric], entry["std"][metric] = mean_std(values)
            variants[task][name] = entry
    comparisons = []
    for task in config.finetune.tasks:
        for a, b, question in COMPARISONS:
            if a not in variants[task] or b not in variants[task]:
                continue
            for metric in TASK_METRICS[task]:
                va = [m[metric] for m in variants[task][a]["per_seed"].values()]
                vb = [m[metric] for m in variants[task][b]["per_seed"].values()]
                row = {"task": task, "a": a, "b": b, "question": question, "metric": metric}
                if va and vb:
                    row.update(compare(va, vb))
                    row["a_better"] = (row["delta"] > 0) == HIGHER_IS_BETTER[metric] if row["delta"] else None
                else:
                    row["exceeds_noise"] = None
                    row["missing"] = [n for n, v in ((a, va), (b, vb)) if not v]
                comparisons.append(row)
    return {
        "demo": config.name,
        "settings": to_dict(config),
        "noise_rule": f"|mean_a - mean_b| > {NOISE_FACTOR:g} x pooled std over seeds (sample std, ddof=1)",
        "machine": {
            "cpu_count": os.cpu_count(),
            "precision": default_precision("cpu"),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "python": sys.version.split()[0],
        },
        "total_seconds": seconds,
        "stages": stage_records,
        "pretraining": pretraining,
        "variants": variants,
        "comparisons": comparisons,
    }


def run_demo(
    source: str | Path = "full",
    out: str | Path = "runs/demo",
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo with the settings ``source`` (``quick``, ``full`` or a YAML file) in ``out``.

    Returns:
        The results written to ``<out>/results.json``.
    """
    config = load_demo_config(source, overrides)
    return Demo(config, out, echo).run()


__all__ = [
    "COMPARISONS",
    "VARIANTS",
    "ClassificationSettings",
    "Demo",
    "DemoConfig",
    "FinetuneSettings",
    "SSLSettings",
    "Stage",
    "Variant",
    "collect_results",
    "compare",
    "load_demo_config",
    "mean_std",
    "plan",
    "run_demo",
]

"""The demo's stages: the plan (which runs, with which settings and inputs) and how one stage is executed.

Kinds of stage:

- ``zoo/<entry>`` (only with ``--from-scratch``): rebuild a zoo entry from its recipe into ``<out>/zoo``
  (:func:`predec.zoo.build.build_entry`); its outputs are the weights file and the manifest's summary;
- ``finetune/<task>/<variant>/n<labels>/seed<k>``: one dense fine-tuning run
  (:func:`predec.engine.dense_runs.train_dense`) on the first ``labels`` labelled scenes, evaluated on the held-out
  scenes. Its encoder / decoder weights are zoo entries by name (``predec:<entry>``, checked against their sha256),
  or the files the ``zoo/`` stages built.

The fine-tuned architectures follow the zoo entries: the encoder (timm name and options) of the classification
entry, the FPN width of the DeCon entries, the ×Net decoder backbone = the classification entry's backbone.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predec.config import ConfigError, load_config, to_dict
from predec.demo.settings import (
    CLASSIFICATION,
    DECON_XNET,
    MAX_DEPTH,
    NUM_SCENE_CLASSES,
    SSL_METHODS,
    TASK_METRICS,
    DemoConfig,
    finetune_stage_name,
    labelled_seed,
    plain,
    probe_stage_name,
    variant,
    zoo_stage_name,
)


@dataclass
class Stage:
    """One unit of work of the demo.

    Attributes:
        name: ``zoo/synth-resnet18h-cls``, ``finetune/segmentation/fpn_pt_enc/n256/seed0``.
        kind: ``zoo`` or ``finetune``.
        spec: the stage's settings (JSON-safe); a cached result is reused only if they are equal.
        needs: names of the stages whose outputs it uses.
        keep_model: keep the fine-tuned model's weights (``run/model``); others keep only metrics and logs.
    """

    name: str
    kind: str
    spec: dict[str, Any]
    needs: tuple[str, ...] = ()
    keep_model: bool = True


# --------------------------------------------------------------------------------------------------------------
# The architecture the zoo entries fix
# --------------------------------------------------------------------------------------------------------------


# ×Net's Re-Shapes, pinned (the library default since): bilinear learns in 200 steps what pixel shuffle (own
# weights per pixel of each 32×32 / 8×8 block) does not, docs/demo.md.
XNET_RESHAPE = "bilinear"


@dataclass(frozen=True)
class Architecture:
    """What the fine-tuned models are made of, read from the zoo entries (manifests, or recipes when rebuilding).

    Attributes:
        encoder: timm name of every encoder and of the ×Net decoder backbone.
        encoder_kwargs: its ``timm.create_model`` options.
        fpn_kwargs: options of every FPN (the DeCon entries' width).
    """

    encoder: str
    encoder_kwargs: dict[str, Any]
    fpn_kwargs: dict[str, Any]

    def model(self, arch: str) -> dict[str, Any]:
        """``ModelConfig`` fields of a fine-tuned ``arch`` (``xnet``, ``fpn``, ``unet``)."""
        fields: dict[str, Any] = {"arch": arch, "encoder": self.encoder, "encoder_kwargs": dict(self.encoder_kwargs)}
        if arch == "xnet":
            fields["decoder"] = self.encoder
            fields["decoder_kwargs"] = {"reshape": XNET_RESHAPE}
            if self.encoder_kwargs:
                fields["decoder_kwargs"]["backbone_kwargs"] = dict(self.encoder_kwargs)
        elif arch == "fpn":
            fields["decoder_kwargs"] = dict(self.fpn_kwargs)
        return fields


def entry_model(config: DemoConfig, source: str, from_scratch: bool) -> dict[str, Any]:
    """Model settings of the zoo entry of ``source``: its manifest's (the shipped file), or with ``from_scratch``
    its recipe's (with ``zoo.scratch_overrides``)."""
    name = config.zoo.entry(source)
    if from_scratch:
        from predec.zoo.build import load_recipe

        model = to_dict(load_recipe(name, config.zoo.scratch_overrides).model)
    else:
        from predec.zoo.registry import find_entry

        model = find_entry(name).model
    return {
        "encoder": model.get("encoder"),
        "encoder_kwargs": dict(model.get("encoder_kwargs") or {}),
        "arch": model.get("arch"),
        "decoder": model.get("decoder"),
        "decoder_kwargs": dict(model.get("decoder_kwargs") or {}),
    }


def architecture(config: DemoConfig, sources: set[str], from_scratch: bool) -> Architecture:
    """The fine-tuning architecture, checked to be the same encoder in every entry used.

    Raises:
        ConfigError: entries with different encoders, or a DeCon entry without an FPN.
    """
    base = entry_model(config, CLASSIFICATION, from_scratch)
    fpn_kwargs: dict[str, Any] | None = None
    for method in SSL_METHODS:
        if method not in sources and not (fpn_kwargs is None and method == "decon-ml"):
            continue
        model = entry_model(config, method, from_scratch)
        name = config.zoo.entry(method)
        if (model["encoder"], model["encoder_kwargs"]) != (base["encoder"], base["encoder_kwargs"]):
            raise ConfigError(
                f"zoo.{method.replace('-', '_')}={name!r} has encoder {model['encoder']!r} {model['encoder_kwargs']}, "
                f"but zoo.classification={config.zoo.classification!r} has {base['encoder']!r} "
                f"{base['encoder_kwargs']}: every entry of a demo must share one encoder."
            )
        if method != "slotcon":
            if model["arch"] != "fpn":
                raise ConfigError(f"zoo.{method.replace('-', '_')}={name!r} pre-trains {model['arch']!r}, not an FPN.")
            width = {"channels": model["decoder_kwargs"].get("channels", 256)}
            if fpn_kwargs is not None and width != fpn_kwargs:
                raise ConfigError(f"The DeCon entries of the demo have FPNs of different widths: {fpn_kwargs}, {width}")
            fpn_kwargs = width
    arch = Architecture(base["encoder"], base["encoder_kwargs"], fpn_kwargs or {"channels": 256})
    if DECON_XNET in sources:
        model = entry_model(config, DECON_XNET, from_scratch)
        name, wanted = config.zoo.entry(DECON_XNET), arch.model("xnet")
        found = {key: model.get(key) for key in ("arch", "encoder", "encoder_kwargs", "decoder", "decoder_kwargs")}
        expected = {key: wanted.get(key) for key in found}
        if found != expected:
            raise ConfigError(
                f"zoo.decon_xnet={name!r} pre-trains {found}, but the demo's ×Net is {expected}: the entry must be "
                "a ×Net on the classification entry's encoder, with that network as its decoder backbone."
            )
    return arch


# --------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------


def plan(config: DemoConfig, from_scratch: bool = False) -> list[Stage]:
    """The stages of a demo run, in dependency order (only what the chosen variants need).

    Without ``from_scratch`` the needed zoo entries are verified now (a missing or corrupt file stops the demo
    before any training, naming the file).

    Raises:
        ConfigError: inconsistent zoo entries; ZooError: a missing or corrupt entry.
    """
    ft = config.finetune
    chosen = [variant(n) for n in ft.variants]
    sources = {s for v in [*chosen, *(variant(n) for n in config.probe.variants)] for s in v.sources}
    arch = architecture(config, sources, from_scratch)
    stages: list[Stage] = []
    provided: dict[str, dict[str, Any]] = {}  # source -> {"stage": zoo stage} (from scratch) or {"sha256": ...}
    if from_scratch:
        from predec.zoo.build import build_order, dependencies, load_recipe

        overrides = list(config.zoo.scratch_overrides)
        entries = build_order([config.zoo.entry(s) for s in sorted(sources)])
        wanted = set(entries)
        for name in entries:  # entries they start from are rebuilt too (they are in the zoo directory then)
            for dependency in dependencies(load_recipe(name, overrides)).values():
                wanted.add(dependency)
        for name in build_order(sorted(wanted)):
            recipe = load_recipe(name, overrides)
            needs = tuple(dict.fromkeys(zoo_stage_name(d) for d in dependencies(recipe).values()))
            spec = {"entry": name, "overrides": overrides, "recipe": to_dict(recipe)}
            stages.append(Stage(zoo_stage_name(name), "zoo", plain(spec), needs))
        provided = {s: {"stage": zoo_stage_name(config.zoo.entry(s))} for s in sources}
    else:
        from predec.zoo.registry import find_entry

        for source in sources:
            entry = find_entry(config.zoo.entry(source))
            entry.verify()
            provided[source] = {"sha256": entry.sha256}
    from predec.zoo.registry import ZOO_PREFIX

    def needs_and_weights(v: Any) -> tuple[tuple[str, ...], dict[str, str | None]]:
        needs = tuple(dict.fromkeys(provided[s]["stage"] for s in v.sources if "stage" in provided[s]))
        weights = {
            part: None if source is None else f"{ZOO_PREFIX}{config.zoo.entry(source)}"
            for part, source in (("encoder", v.encoder_source), ("decoder", v.decoder_source))
        }
        return needs, weights

    scenes = {
        "num_val": ft.num_val,
        "num_test": ft.num_test,
        "image_size": ft.image_size,
        "scene_options": ft.scene_options,
    }
    # Seed-major: every variant's first seed before anyone's second, so a partial run already compares them all.
    finetune = []
    for task in ft.tasks:
        for v in chosen:
            needs, weights = needs_and_weights(v)
            for num_train in ft.budgets_of(v.name):
                for seed in ft.seeds_of(v.name):
                    spec = {
                        "task": task,
                        "variant": v.name,
                        "seed": seed,
                        "num_train": num_train,
                        "model": arch.model(v.arch),
                        "weights": weights,
                        "zoo": {s: provided[s].get("sha256") for s in v.sources},
                        "data_seed": config.data_seed,
                        "settings": {**to_dict(ft), "tasks": None, "variants": None, "seeds": None,
                                     "reference_seeds": None, "num_train": None, "extra_num_train": None,
                                     "keep_models": None,
                                     "max_steps": ft.steps_of(num_train)},
                    }  # fmt: skip
                    rank = ft.seeds_of(v.name).index(seed)
                    keep = ft.keep_models and rank == 0
                    name = finetune_stage_name(task, v.name, num_train, seed)
                    finetune.append((rank, Stage(name, "finetune", plain(spec), needs, keep)))
    pr = config.probe
    for task in ft.tasks:
        for v in (variant(n) for n in pr.variants):
            needs, weights = needs_and_weights(v)
            for seed in pr.seeds:
                spec = {
                    "task": task,
                    "variant": v.name,
                    "seed": seed,
                    "num_train": pr.num_train,
                    "model": arch.model(v.arch),
                    "weights": weights,
                    "zoo": {s: provided[s].get("sha256") for s in v.sources},
                    "data_seed": config.data_seed,
                    # the probe's input: stage records of the earlier probe on raw features do not count
                    "settings": {**scenes, "epochs": pr.epochs, "lr": pr.lr, "features": "standardised"},
                }
                name = probe_stage_name(task, v.name, pr.num_train, seed)
                stages.append(Stage(name, "probe", plain(spec), needs, keep_model=False))
    stages += [stage for _, stage in sorted(finetune, key=lambda item: item[0])]  # stable: plan order within a rank
    return stages


def finetune_config(spec: dict[str, Any], weights: dict[str, str | None], run_dir: Path, progress_bar: bool) -> Any:
    """The :class:`predec.config.DenseConfig` of a fine-tuning stage (a probe stage's model and scenes too).

    Args:
        spec: the stage spec (see :func:`plan`).
        weights: ``{"encoder": spec | None, "decoder": spec | None}``.
        run_dir: the stage's run directory.
        progress_bar: show Lightning's progress bar.
    """
    from predec.config import DenseConfig
    from predec.data.synthetic import SCENE_CLASSES

    if len(SCENE_CLASSES) != NUM_SCENE_CLASSES:
        raise RuntimeError(f"SynthScenes has {len(SCENE_CLASSES)} classes, the demo expects {NUM_SCENE_CLASSES}.")
    s, task = spec["settings"], spec["task"]
    model = {**spec["model"], "task": task, "encoder_weights": weights.get("encoder")}
    model["decoder_weights"] = weights.get("decoder")
    model.update({"num_classes": NUM_SCENE_CLASSES} if task == "segmentation" else {"max_depth": MAX_DEPTH})
    steps = s.get("max_steps", 1)
    validate = s.get("val_every_n_steps")
    recipe = {
        "name": run_dir.name,
        "output_dir": str(run_dir.parent),
        "seed": spec["seed"],
        "model": model,
        "data": {
            "dataset": "synth",
            "num_train": spec["num_train"],
            "num_val": s["num_val"],
            "test_split": "test" if s.get("num_test") else None,
            "num_test": s.get("num_test") or 0,
            "image_size": s["image_size"],
            "synth_seed": labelled_seed(spec["data_seed"]),
            "reader_kwargs": dict(s.get("scene_options") or {}),
            "batch_size": s.get("batch_size", 8),
            "eval_batch_size": 50,
        },
        "optim": {"name": "adamw", "lr": s.get("lr", 1e-3), "weight_decay": 0.01},
        "schedule": (
            {
                "name": "plateau",
                "warmup_steps": min(100, max(1, steps // 10)),
                "warmup_ratio": 0.01,
                "gamma": 0.1,
                "plateau_patience": s["plateau_patience"],
            }
            if s.get("schedule") == "plateau"
            else {"name": "poly", "warmup_steps": max(1, steps // 10), "warmup_ratio": 0.01}
        ),
        "trainer": {
            "precision": "auto",
            "max_steps": steps,
            "val_every_n_steps": validate,
            "monitor": "auto" if validate else None,
            "patience": s.get("patience"),
            "min_delta": float((s.get("min_delta") or {}).get(task, 0.0)),
            "checkpoint_every_n_steps": steps,  # the demo resumes per stage; one write per run
            "log_every_n_steps": max(1, min(10, steps // 10)),
            "progress_bar": progress_bar,
        },
        "eval": {"min_depth": 1e-3, "max_depth": MAX_DEPTH},
    }
    return load_config(recipe, s.get("overrides", []), schema=DenseConfig)


# --------------------------------------------------------------------------------------------------------------
# Execution (in a worker process or in the main process)
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
        progress: show progress bars (else the stage's output goes to ``stage_dir/output.log``).
    """
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_lightning()
    stage_dir.mkdir(parents=True, exist_ok=True)
    runner: Callable[..., dict[str, Any]] = {"zoo": _run_zoo, "finetune": _run_finetune, "probe": _run_probe}[
        stage.kind
    ]
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


def zoo_dir(stage_dir: Path) -> Path:
    """Where ``--from-scratch`` writes the rebuilt entries: ``<out>/zoo`` for ``<out>/stages/zoo/<entry>``."""
    return stage_dir.parent.parent.parent / "zoo"


def _run_zoo(stage: Stage, stage_dir: Path, inputs: dict, progress: bool) -> dict[str, Any]:
    from predec.zoo.build import build_entry

    entry = build_entry(
        stage.spec["entry"], zoo_dir(stage_dir), stage.spec["overrides"], progress=progress, echo=lambda _: None
    )
    m = entry.manifest
    return {
        "entry": entry.name,
        "weights": str(entry.file),
        "sha256": entry.sha256,
        "metric": m["metric"],
        "steps": m["steps"],
        "wall_seconds": m["wall_seconds"],
        "metrics": {m["metric"]["name"]: m["metric"]["value"]},
    }


def _weights(spec: dict[str, Any], inputs: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """The weight specs of a fine-tuning stage: zoo entries by name, or (``--from-scratch``) the files its ``zoo/``
    input stages built for those entries."""
    from predec.zoo.registry import ZOO_PREFIX

    built = {f"{ZOO_PREFIX}{out['entry']}": out["weights"] for out in inputs.values() if "entry" in out}
    return {part: built.get(spec_, spec_) if spec_ else None for part, spec_ in spec["weights"].items()}


def weight_change(initial: dict[str, Any], final: dict[str, Any]) -> dict[str, float]:
    """Relative L2 change ``‖W_final − W_initial‖ / ‖W_initial‖`` of the weights (not the BatchNorm statistics) of
    each part: ``encoder``, ``decoder``, ``head`` and, for ×Net, ``decoder.backbone`` (the pre-trained classifier).

    Args:
        initial: state dict of the model before fine-tuning.
        final: state dict after fine-tuning (same keys).
    """
    import torch

    parts: dict[str, list[str]] = {}
    for key, value in initial.items():
        if not value.is_floating_point() or key.endswith(("running_mean", "running_var")):
            continue
        top = key.split(".", 1)[0]
        parts.setdefault(top, []).append(key)
        if key.startswith("decoder.backbone."):
            parts.setdefault("decoder.backbone", []).append(key)
    change = {}
    for part, keys in parts.items():
        before = torch.cat([initial[k].float().flatten() for k in keys])
        after = torch.cat([final[k].float().flatten() for k in keys])
        norm = float(before.norm())
        change[part] = float((after - before).norm()) / norm if norm else float("nan")
    return change


def _run_finetune(stage: Stage, stage_dir: Path, inputs: dict, progress: bool) -> dict[str, Any]:
    import lightning as L

    from predec.engine.dense import DenseModule
    from predec.engine.dense_runs import train_dense

    run_dir = stage_dir / "run"
    config = finetune_config(stage.spec, _weights(stage.spec, inputs), run_dir, progress)
    L.seed_everything(config.seed, workers=True, verbose=False)  # train_dense's seeding: the same initial model
    initial = {k: v.detach().clone() for k, v in DenseModule(config).model.state_dict().items()}
    started = time.perf_counter()
    result = train_dense(config, run_dir, overwrite=True)
    train_seconds = time.perf_counter() - started
    metrics = result.metrics["metrics"]
    task = stage.spec["task"]
    missing = [k for k in TASK_METRICS[task] if k not in metrics]
    if missing:
        raise KeyError(f"{result.run_dir.metrics_path} lacks the metrics {missing}; it has {sorted(metrics)}.")
    kept: dict[str, Any] = {k: float(metrics[k]) for k in TASK_METRICS[task]}
    import predec

    final = predec.from_pretrained(result.run_dir.model_dir).state_dict()
    predictions = stage_dir / "predictions.npz"
    _save_predictions(result.run_dir.model_dir, config, stage.spec["settings"]["grid_images"], predictions)
    shutil.rmtree(result.run_dir.checkpoints, ignore_errors=True)  # 3× the model's size; model/ keeps the weights
    if not stage.keep_model:
        shutil.rmtree(result.run_dir.model_dir, ignore_errors=True)
    record = result.metrics
    outputs = {
        "metrics": kept,
        "step": result.step,
        "train_seconds": train_seconds,
        "weight_change": weight_change(initial, final),
        "csv": _csv_log(result.run_dir),
        "train_curve": train_curve(_csv_log(result.run_dir)),
        "predictions": predictions.name,  # in the stage directory: the stage records can move with it
        "command": rerun_command(stage.name),
        "model_dir": str(result.run_dir.model_dir),
    }
    if "selection" in record:
        outputs["selection"] = record["selection"]
        outputs["val_history"] = record.get("val_history", {})
        outputs["val_metrics"] = {k: record.get("val_metrics", {}).get(k) for k in TASK_METRICS[task]}
    if task == "segmentation":
        outputs["per_class_iou"] = [float(v) for v in metrics.get("IoU", [])]
    return outputs


def rerun_command(stage_name: str) -> str:
    """The command that re-runs a fine-tuning stage alone, from the demo's output directory: ``predec train`` on the
    recipe the stage ran (``stages/<name>/run/config.yaml``: weights by zoo name, data, schedule, selection and test
    split), into a new run directory."""
    return f"predec train --config stages/{stage_name}/run/config.yaml --run-dir rerun/{stage_name}"


def train_curve(csv_file: str, points: int = 100) -> list[list[float]]:
    """``[[step, mean training loss], ...]`` of a run's CSV log in at most ``points`` equal windows (kept in the stage
    record, so that the report needs no log file)."""
    from predec.engine.run_dir import read_csv_metric

    if not csv_file or not Path(csv_file).is_file():
        return []
    steps, values = read_csv_metric(csv_file, "train/loss")
    size = max(1, -(-len(steps) // points))
    return [
        [steps[i : i + size][-1], sum(values[i : i + size]) / len(values[i : i + size])]
        for i in range(0, len(steps), size)
    ]


def _run_probe(stage: Stage, stage_dir: Path, inputs: dict, progress: bool) -> dict[str, Any]:
    """A variant's pre-trained encoder and decoder (random parts seeded by the stage's seed), frozen; a linear probe
    on its decoder features of the labelled scenes, scored on the test scenes (validation scenes without a test
    split)."""
    import lightning as L

    from predec.engine.dense import build_model
    from predec.engine.probe import probe_model, synth_probe_data

    config = finetune_config(stage.spec, _weights(stage.spec, inputs), stage_dir / "run", progress)
    task, s, data = stage.spec["task"], stage.spec["settings"], config.data
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(config.model)
    options = dict(data.reader_kwargs)
    size = tuple(data.image_size)
    train = synth_probe_data(data.num_train, size, data.synth_seed, task, **options)
    held_out = (data.num_test, data.synth_seed + 2) if data.test_split else (data.num_val, data.synth_seed + 1)
    test = synth_probe_data(held_out[0], size, held_out[1], task, **options)
    started = time.perf_counter()
    result = probe_model(
        model,
        *train,
        *test,
        task=task,
        num_classes=config.model.num_classes,
        max_depth=config.model.max_depth,
        seed=config.seed,
        epochs=s["epochs"],
        lr=s["lr"],
    )
    metrics = result["metrics"]
    outputs = {
        "metrics": {k: float(metrics[k]) for k in TASK_METRICS[task]},
        "train_metrics": {k: float(result["train_metrics"][k]) for k in TASK_METRICS[task]},
        "fit": {k: v for k, v in result["fit"].items() if k != "loss_curve"},
        "loss_curve": result["fit"]["loss_curve"],
        "feature_shape": result["feature_shape"],
        "held_out": {"scenes": held_out[0], "seed": held_out[1]},
        "probe_seconds": time.perf_counter() - started,
    }
    if task == "segmentation":
        outputs["per_class_iou"] = [float(v) for v in metrics.get("IoU", [])]
    return outputs


def _csv_log(run: Any) -> str:
    """The first CSV log of a run directory ("" if none)."""
    return str(next(iter(sorted(run.logs.glob("csv/**/metrics.csv"))), ""))


def _save_predictions(model_dir: Path, config: Any, count: int, path: Path) -> None:
    """Predictions of the trained model on the first ``count`` evaluation scenes (for the prediction grids)."""
    import numpy as np
    import torch

    import predec
    from predec.data.transforms import eval_transform
    from predec.engine.datamodule import build_dataset

    if count <= 0:
        return
    dataset = build_dataset(config.data, "test" if config.data.test_split else "val", transform=eval_transform())
    images = torch.stack([dataset[i]["image"].as_subclass(torch.Tensor) for i in range(min(count, len(dataset)))])
    model = predec.from_pretrained(model_dir)
    with torch.inference_mode():
        output = model.predict(images)
    if config.model.task == "segmentation":
        array = output.argmax(1).to(torch.uint8).numpy()
    else:
        array = output[:, 0].float().numpy().astype(np.float16)
    np.savez_compressed(path, prediction=array)


__all__ = [
    "Architecture",
    "Stage",
    "architecture",
    "execute_stage",
    "finetune_config",
    "plan",
    "train_curve",
    "weight_change",
]

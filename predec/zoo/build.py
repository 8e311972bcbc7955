"""Build zoo entries: run an entry's recipe with the pre-training engine and package its weights.

An entry's recipe is an ordinary ``predec pretrain`` recipe, ``predec/configs/zoo/<name>.yaml`` (its ``name`` is the
entry name). :func:`build_entry` runs it (resuming an interrupted build of the same settings), then writes into the
output directory:

- ``<name>.safetensors``: the transferable weights, floating-point tensors stored as float16 — ``method:
  supervised``: the timm classifier (timm keys; a weight spec for an encoder or a ×Net decoder backbone); SSL
  methods: the **teacher** encoder (``encoder.*``) and decoder (``decoder.*``), as a downstream ``DenseModel``
  names them;
- ``<name>.json``: the manifest (recipe, command, steps, metric and its curve, wall time, machine, versions, inputs,
  sha256).

A recipe may start from another entry (``model.encoder_weights: predec:<other>``): the other entry is looked up in
the output directory first (so a whole zoo can be rebuilt into one directory), then in the usual zoo directories,
and its sha256 is recorded in the manifest's ``inputs``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from predec.atomic import atomic_path
from predec.config import ConfigError, load_config, to_dict
from predec.engine.run_dir import RunDir, read_csv_metric, write_json
from predec.zoo.registry import (
    MANIFEST_SUFFIX,
    WEIGHTS_SUFFIX,
    ZOO_PREFIX,
    ZooEntry,
    find_entry,
    recipe_names,
    recipes_dir,
    search_dirs,
    sha256_file,
)

WEIGHT_KEYS: tuple[str, ...] = ("encoder_weights", "decoder_weights")
CURVE_POINTS = 80
"""Training-loss points kept in a manifest's curve (means over equal bins of steps)."""


def recipe_path(name: str) -> Path:
    """The recipe file of entry ``name``.

    Raises:
        ConfigError: no such recipe (the buildable entries listed).
    """
    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"No zoo recipe {name!r} ({path}); buildable entries: {', '.join(recipe_names())}.")
    return path


def load_recipe(name: str, overrides: Sequence[str] = ()) -> Any:
    """The :class:`~predec.pretrain.config.PretrainConfig` of entry ``name`` with ``key=value`` overrides.

    Raises:
        ConfigError: unknown entry, invalid recipe, or a recipe whose ``name`` is not the entry name.
    """
    from predec.pretrain.config import PretrainConfig

    path = recipe_path(name)
    config = load_config(path, overrides, schema=PretrainConfig)
    if config.name != name:
        raise ConfigError(f"{path}: name={config.name!r}, but a zoo recipe's name must be its entry name {name!r}.")
    return config


def dependencies(config: Any) -> dict[str, str]:
    """``{"model.encoder_weights": entry name, ...}`` for the weight specs of ``config`` naming zoo entries."""
    return {
        f"model.{key}": str(getattr(config.model, key)).removeprefix(ZOO_PREFIX)
        for key in WEIGHT_KEYS
        if str(getattr(config.model, key) or "").startswith(ZOO_PREFIX)
    }


def build_order(names: Sequence[str]) -> list[str]:
    """``names`` ordered so that an entry comes after the entries among ``names`` it starts from (entries not in
    ``names`` are not added: they are looked up where they are).

    Raises:
        ConfigError: an unknown entry, or a dependency cycle.
    """
    wanted = list(dict.fromkeys(names))
    needs = {name: [d for d in dependencies(load_recipe(name)).values() if d in wanted] for name in wanted}
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ConfigError(f"Zoo recipes depend on each other in a cycle: {' -> '.join((*path, name))}.")
        for dependency in needs[name]:
            visit(dependency, (*path, name))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def machine_info(precision: str) -> dict[str, Any]:
    """What ran a build: CPU model and cores, bf16 support, GPU (if used), precision, library versions."""
    import lightning
    import timm
    import torch

    import predec
    from predec.engine.trainer import cpu_has_bf16, cpu_name

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "precision": precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "predec": predec.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def loss_curve(run: RunDir, column: str = "train/loss", points: int = CURVE_POINTS) -> list[list[float]]:
    """``[[step, mean value], ...]`` of a logged column over ``points`` equal bins of steps (all CSV logs of the run,
    resumed parts included)."""
    rows: dict[int, float] = {}
    for csv_file in sorted(run.logs.glob("csv/**/metrics.csv")):
        steps, values = read_csv_metric(csv_file, column)
        rows.update(zip(steps, values))
    if not rows:
        return []
    steps = sorted(rows)
    size = max(1, -(-len(steps) // points))
    curve = []
    for start in range(0, len(steps), size):
        chunk = steps[start : start + size]
        curve.append([chunk[-1], sum(rows[s] for s in chunk) / len(chunk)])
    return curve


def tail_change(curve: Sequence[Sequence[float]], fraction: float = 0.1) -> float | None:
    """Relative change of the mean loss from the second-to-last to the last ``fraction`` of the curve's points
    (how flat the loss is at the end; None for too short a curve)."""
    count = max(1, round(len(curve) * fraction))
    if len(curve) < 2 * count:
        return None
    last = [v for _, v in curve[-count:]]
    before = [v for _, v in curve[-2 * count : -count]]
    mean_before = sum(before) / len(before)
    return (sum(last) / len(last) - mean_before) / abs(mean_before) if mean_before else None


def _transferable(method: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The tensors an entry ships: the classifier (timm keys), or the teacher encoder/decoder (``encoder.*`` /
    ``decoder.*``), floating-point ones as float16."""
    import safetensors.torch
    import torch

    if method == "supervised":
        state = safetensors.torch.load_file(metrics["classifier"])
    else:
        full = safetensors.torch.load_file(metrics["weights"])
        state = {k.removeprefix("teacher."): v for k, v in full.items() if k.startswith("teacher.")}
    return {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _metric(config: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    if config.method == "supervised":
        return {
            "name": "top1",
            "value": float(metrics["top1"]),
            "split": f"held-out: {metrics.get('num_images')} images ({config.data.dataset}, seed "
            f"{config.data.synth_seed + 1})",
            "classes": metrics.get("classes"),
        }
    return {
        "name": "loss",
        "value": metrics.get("loss_last"),
        "first": metrics.get("loss_first"),
        "window": metrics.get("loss_window"),
        "split": "training (mean of the last window of steps)",
    }


def build_entry(
    name: str,
    out_dir: str | Path = "runs/zoo",
    overrides: Sequence[str] = (),
    *,
    progress: bool = True,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> ZooEntry:
    """Run the recipe of entry ``name`` and write ``<out_dir>/<name>.safetensors`` + ``<name>.json``.

    The pre-training run lives in ``<out_dir>/build/<name>/`` (logs, config, metrics; its checkpoints are removed
    once the entry is written). An interrupted build with the same settings resumes; a finished one is re-run.

    Args:
        name: the entry (a recipe ``predec/configs/zoo/<name>.yaml``).
        out_dir: where the entry is written.
        overrides: ``key=value`` overrides of the recipe (recorded in the manifest and its command).
        progress: show Lightning's progress bar (steps, rate, time left).
        overwrite: discard an interrupted build instead of resuming it.
        echo: where progress lines go.

    Returns:
        The new entry (verified).

    Raises:
        ConfigError: unknown entry or bad overrides; ZooError: an entry it starts from is missing or corrupt.
    """
    from predec.pretrain.runs import run_pretraining

    out = Path(out_dir)
    config = load_recipe(name, overrides)
    config.trainer.progress_bar = progress
    description = describe(config)
    inputs = {}
    for key, dependency in dependencies(config).items():
        entry = find_entry(dependency, search_dirs([out]))
        path = entry.verify()
        inputs[key] = {"entry": dependency, "sha256": entry.sha256, "file": str(path)}
        setattr(config.model, key.split(".", 1)[1], str(path))
    run = RunDir(out / "build" / name)
    echo(f"Building zoo entry {name} ({config.method}, {config.trainer.max_steps} steps) in {run.root}")
    started = time.perf_counter()
    result = run_pretraining(config, run.root, overwrite=overwrite or run.is_finished)
    seconds = time.perf_counter() - started
    state = _transferable(config.method, result.metrics)

    import safetensors.torch

    from predec.engine.trainer import resolve_precision

    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}{WEIGHTS_SUFFIX}"
    with atomic_path(weights) as tmp:
        safetensors.torch.save_file(state, str(tmp), metadata={"predec_zoo_entry": name})
        tmp.chmod(0o644)  # a shippable file, readable by every user of an installation
    curve = loss_curve(result.run_dir)
    manifest = {
        "name": name,
        "method": config.method,
        "description": description,
        "command": "predec zoo build " + shlex.join([name, *overrides]),
        "recipe": f"predec/configs/zoo/{name}.yaml",
        "overrides": list(overrides),
        "model": _model_fields(config),
        "parts": sorted({k.split(".", 1)[0] for k in state}) if config.method != "supervised" else ["classifier"],
        "steps": result.step,
        "metric": _metric(config, result.metrics),
        "curve": {"train/loss": curve, "val/top1": loss_curve(result.run_dir, "val/top1")},
        "loss_tail_change": tail_change(curve),
        "wall_seconds": round(seconds, 1),
        "resumed": bool(result.run_dir.status().get("resumed_from")),
        "machine": machine_info(resolve_precision(config.trainer)),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {k: {"entry": v["entry"], "sha256": v["sha256"]} for k, v in inputs.items()},
        "config": to_dict(config) | {"model": {**to_dict(config.model), **_spec_names(config, inputs)}},
        "file": weights.name,
        "dtype": "float16",
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values() if v.is_floating_point())),
        "bytes": weights.stat().st_size,
        "sha256": sha256_file(weights),
    }
    write_json(out / f"{name}{MANIFEST_SUFFIX}", manifest)
    shutil.rmtree(result.run_dir.checkpoints, ignore_errors=True)  # large, and the entry is written
    entry = find_entry(name, [out])
    entry.verify()
    echo(f"Wrote {weights} ({manifest['bytes'] / 1e6:.1f} MB, sha256 {manifest['sha256'][:12]}) in {seconds:.0f} s")
    return entry


def _model_fields(config: Any) -> dict[str, Any]:
    model = to_dict(config.model)
    fields = {"encoder": model["encoder"], "encoder_kwargs": model["encoder_kwargs"]}
    if model.get("arch"):
        fields.update(arch=model["arch"], decoder=model.get("decoder"), decoder_kwargs=model["decoder_kwargs"])
    return fields


def _spec_names(config: Any, inputs: dict[str, dict[str, str]]) -> dict[str, str]:
    """The recipe's own ``predec:`` weight specs (the run used the resolved files)."""
    return {key.split(".", 1)[1]: f"{ZOO_PREFIX}{value['entry']}" for key, value in inputs.items()}


def describe(config: Any) -> str:
    """One line: what the entry is (method, networks, data)."""
    model = config.model
    encoder = model.encoder + (f" {json.dumps(model.encoder_kwargs)}" if model.encoder_kwargs else "")
    if config.method == "supervised":
        mode = config.data.reader_kwargs.get("label_mode", "")
        return f"{encoder} classifier, supervised on {config.data.dataset} {mode}".rstrip()
    networks = encoder + (f" + {model.arch}" if model.arch else "")
    start = f", from {model.encoder_weights}" if model.encoder_weights else ""
    return f"{networks}, {config.method} on {config.data.dataset}{start}"


__all__ = ["build_entry", "build_order", "dependencies", "describe", "load_recipe", "recipe_path"]

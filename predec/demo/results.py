"""The demo's results: per-variant statistics over seeds, the noise rule, and the content of ``results.json``."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from predec.config import to_dict
from predec.demo.settings import (
    COMPARISONS,
    HIGHER_IS_BETTER,
    NOISE_FACTOR,
    TASK_METRICS,
    DemoConfig,
    finetune_stage_name,
    variant,
)
from predec.demo.stages import Stage

DONE, FAILED, CACHED, SKIPPED = "done", "failed", "cached", "skipped"


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


def _mean_lists(lists: list[list[float]]) -> list[float | None]:
    """Element-wise mean of equal-length lists, skipping NaN (None where every value is NaN)."""
    means = []
    for column in zip(*lists):
        values = [v for v in column if not math.isnan(v)]
        means.append(sum(values) / len(values) if values else None)
    return means


def _budget_entry(records: dict[str, dict[str, Any]], task: str) -> dict[str, Any]:
    """Statistics of one variant at one label budget from its per-seed stage records."""
    per_seed, errors, extra = {}, {}, {}
    for seed, record in records.items():
        if record["state"] in (DONE, CACHED):
            per_seed[seed] = record["outputs"]["metrics"]
            extra[seed] = record["outputs"]
        else:
            errors[seed] = record.get("error") or record["state"]
    entry: dict[str, Any] = {
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
    ious = [out["per_class_iou"] for out in extra.values() if out.get("per_class_iou")]
    if ious:
        entry["per_class_iou"] = _mean_lists(ious)
    changes = [out["weight_change"] for out in extra.values() if out.get("weight_change")]
    if changes:
        entry["weight_change"] = {k: sum(c[k] for c in changes) / len(changes) for k in changes[0]}
    return entry


def collect_results(
    config: DemoConfig,
    stages: list[Stage],
    states: dict[str, dict[str, Any]],
    seconds: float,
    load_start: str,
    load_end: str,
    *,
    from_scratch: bool = False,
    zoo: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The content of ``results.json``: settings, stage states and times, the zoo entries used, per-variant metrics
    per label budget (per seed, mean, std, per-class IoU, weight change) and the decisive comparisons.

    Args:
        config: the settings.
        stages: the planned stages.
        states: each stage's record (state, outputs, seconds, error).
        seconds: wall time of the run.
        load_start: load average at the start.
        load_end: load average at the end.
        from_scratch: the zoo entries were rebuilt by this run.
        zoo: source → summary of the entry used (name, metric, steps, wall time, sha256).
    """
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
    ft = config.finetune
    variants: dict[str, dict[str, Any]] = {}
    for task in ft.tasks:
        variants[task] = {}
        for name in ft.variants:
            budgets = {}
            for num_train in ft.num_train:
                records = {
                    str(seed): stage_records[finetune_stage_name(task, name, num_train, seed)] for seed in ft.seeds
                }
                budgets[str(num_train)] = _budget_entry(records, task)
            variants[task][name] = {"description": variant(name).description, "budgets": budgets}
    comparisons = []
    for task in ft.tasks:
        for num_train in ft.num_train:
            for a, b, question in COMPARISONS:
                if a not in variants[task] or b not in variants[task]:
                    continue
                entry_a = variants[task][a]["budgets"][str(num_train)]
                entry_b = variants[task][b]["budgets"][str(num_train)]
                for metric in TASK_METRICS[task]:
                    va = [m[metric] for m in entry_a["per_seed"].values()]
                    vb = [m[metric] for m in entry_b["per_seed"].values()]
                    row = {"task": task, "num_train": num_train, "a": a, "b": b, "question": question}
                    row["metric"] = metric
                    if va and vb:
                        row.update(compare(va, vb))
                        row["a_better"] = (row["delta"] > 0) == HIGHER_IS_BETTER[metric] if row["delta"] else None
                    else:
                        row["exceeds_noise"] = None
                        row["missing"] = [n for n, v in ((a, va), (b, vb)) if not v]
                    comparisons.append(row)
    return {
        "demo": config.name,
        "from_scratch": from_scratch,
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
        "zoo": zoo or {},
        "variants": variants,
        "comparisons": comparisons,
    }


__all__ = ["CACHED", "DONE", "FAILED", "SKIPPED", "collect_results", "compare", "mean_std"]

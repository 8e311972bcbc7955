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
    probe_stage_name,
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
    commands = {seed: out["command"] for seed, out in extra.items() if out.get("command")}
    if commands:
        entry["commands"] = commands
    selections = {seed: out["selection"] for seed, out in extra.items() if out.get("selection")}
    if selections:
        entry["selection"] = {
            seed: {**sel, "flattened": flattened(extra[seed].get("val_history", {}), sel["monitor"], sel["mode"])}
            for seed, sel in selections.items()
        }
    return entry


CONVERGED_TAIL = 0.2
"""The last fraction of a run whose validation gain tells whether it has flattened."""
CONVERGED_GAIN = 0.01
"""A run has flattened if its last :data:`CONVERGED_TAIL` improved the monitored metric by less than this, relative."""


def flattened(history: dict[str, dict[str, float]], monitor: str, mode: str) -> dict[str, Any]:
    """Has a run's validation curve flattened? The best value of the last :data:`CONVERGED_TAIL` of its steps against
    the best before them: a relative gain below :data:`CONVERGED_GAIN` (or none) is flat.

    Args:
        history: ``{step: {metric: value}}`` (steps as strings, as in ``metrics.json``).
        monitor: the metric (``val/mIoU``).
        mode: ``max`` or ``min``.

    Returns:
        ``{"tail_from_step", "best_before", "best_in_tail", "relative_gain", "flat"}`` (``flat`` None when the run
        has fewer than two validations before its tail).
    """
    points = sorted((int(k), v[monitor]) for k, v in history.items() if monitor in v)
    if not points:
        return {"flat": None}
    last = points[-1][0]
    start = last * (1 - CONVERGED_TAIL)
    before = [v for step, v in points if step <= start]
    tail = [v for step, v in points if step > start]
    if len(before) < 2 or not tail:
        return {"tail_from_step": start, "flat": None}
    best = max if mode == "max" else min
    best_before, best_tail = best(before), best(tail)
    sign = 1.0 if mode == "max" else -1.0
    gain = sign * (best_tail - best_before) / abs(best_before) if best_before else 0.0
    return {
        "tail_from_step": start,
        "best_before": best_before,
        "best_in_tail": best_tail,
        "relative_gain": gain,
        "flat": gain < CONVERGED_GAIN,
    }


def _comparison_rows(
    task: str, budget: Any, comparison: Any, entry_a: dict[str, Any], entry_b: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for metric in TASK_METRICS[task]:
        va = [m[metric] for m in entry_a["per_seed"].values()]
        vb = [m[metric] for m in entry_b["per_seed"].values()]
        row = {"task": task, "num_train": budget, "a": comparison.a, "b": comparison.b}
        row |= {"question": comparison.question, "decisive": comparison.decisive, "metric": metric}
        if va and vb:
            row.update(compare(va, vb))
            row["a_better"] = (row["delta"] > 0) == HIGHER_IS_BETTER[metric] if row["delta"] else None
        else:
            row["exceeds_noise"] = None
            row["missing"] = [n for n, v in ((comparison.a, va), (comparison.b, vb)) if not v]
        rows.append(row)
    return rows


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
            for num_train in ft.budgets_of(name):
                records = {
                    str(seed): stage_records[finetune_stage_name(task, name, num_train, seed)]
                    for seed in ft.seeds_of(name)
                }
                budgets[str(num_train)] = _budget_entry(records, task)
            variants[task][name] = {
                "description": variant(name).description,
                "seeds": ft.seeds_of(name),
                "budgets": budgets,
            }
    comparisons = []
    for task in ft.tasks:
        for num_train in ft.all_budgets():
            for c in COMPARISONS:
                pair = [variants[task].get(n, {}).get("budgets", {}).get(str(num_train)) for n in (c.a, c.b)]
                if all(entry is not None for entry in pair):
                    entries = iter(pair)
                    comparisons += _comparison_rows(task, num_train, c, *entries)
    probe: dict[str, Any] = {}
    pr = config.probe
    for task in ft.tasks if pr.variants else ():
        probed = {}
        for name in pr.variants:
            records = {str(seed): stage_records[probe_stage_name(task, name, pr.num_train, seed)] for seed in pr.seeds}
            probed[name] = {"description": variant(name).description, **_budget_entry(records, task)}
        rows = []
        for c in COMPARISONS:
            if c.a in probed and c.b in probed:
                rows += _comparison_rows(task, pr.num_train, c, probed[c.a], probed[c.b])
        probe[task] = {"num_train": pr.num_train, "variants": probed, "comparisons": rows}
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
        "probe": probe,
    }


__all__ = ["CACHED", "DONE", "FAILED", "SKIPPED", "collect_results", "compare", "flattened", "mean_std"]

"""The demo's report: markdown tables (``report.md``) and PNG figures (prediction grids, training curves, label
efficiency) of the results dictionary (:func:`predec.demo.results.collect_results`, the content of
``results.json``) and the files its stages wrote; numbers are printed as the runs produced them."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predec.atomic import atomic_write_text
from predec.demo.settings import TASK_METRICS, finetune_stage_name, labelled_seed
from predec.engine.run_dir import write_json

METRIC_LABELS: dict[str, str] = {
    "mIoU": "mIoU ↑",
    "aAcc": "aAcc ↑",
    "abs_rel": "AbsRel ↓",
    "rmse": "RMSE ↓",
    "d1": "δ1 ↑",
}
SCENE_CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "sphere", "box", "cylinder", "cone")
"""SynthScenes' classes in label order (``predec.data.synthetic.SCENE_CLASSES``; checked by a test)."""


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells converted with ``str``; ``|`` escaped)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_mean_std(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``0.412 ± 0.008``, ``0.412`` (one seed) or ``—`` (no value)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} s"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _budgets(results: dict[str, Any]) -> list[str]:
    """The label budgets every variant ran (``finetune.num_train``)."""
    return [str(n) for n in results["settings"]["finetune"]["num_train"]]


def _all_budgets(results: dict[str, Any]) -> list[str]:
    """Every label budget any variant ran: the shared ones, then those of ``finetune.extra_num_train``."""
    shared = [int(b) for b in _budgets(results)]
    extra = {n for budgets in (results["settings"]["finetune"].get("extra_num_train") or {}).values() for n in budgets}
    return [str(n) for n in shared + sorted(extra - set(shared))]


def variant_rows(results: dict[str, Any], task: str, budget: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-variant table of ``task`` at label budget ``budget`` (mean ± std over seeds;
    with model selection, the mean step chosen and how many runs' validation curves flattened)."""
    metrics = TASK_METRICS[task]
    entries = {name: v["budgets"][budget] for name, v in results["variants"][task].items() if budget in v["budgets"]}
    selected = any(e.get("selection") for e in entries.values())
    headers = ["variant", "description", *(METRIC_LABELS[m] for m in metrics), "seeds"]
    headers += ["step chosen", "flattened"] if selected else []
    headers.append("state")
    rows = []
    for name, variant in results["variants"][task].items():
        if name not in entries:
            continue
        entry = entries[name]
        cells = [format_mean_std(entry["mean"].get(m), entry["std"].get(m)) for m in metrics]
        state = entry["state"]
        if entry["errors"]:
            state += f" ({_shorten(next(iter(entry['errors'].values())), 100)})"
        row = [name, variant["description"], *cells, str(len(entry["per_seed"]))]
        if selected:
            row += selection_cells(entry.get("selection") or {})
        rows.append([*row, state])
    return headers, rows


def selection_cells(selection: dict[str, dict[str, Any]]) -> list[str]:
    """``[chosen step (mean of seeds, of the runs' last steps), flattened runs / runs]`` of a variant's runs."""
    if not selection:
        return ["—", "—"]
    chosen = sum(s["step"] for s in selection.values()) / len(selection)
    last = sum(s["last_step"] for s in selection.values()) / len(selection)
    early = sum(bool(s.get("early_stopped")) for s in selection.values())
    flat = sum(bool(s.get("early_stopped")) or bool(s["flattened"].get("flat")) for s in selection.values())
    stopped = f", {early} stopped early" if early else ""
    return [f"{chosen:.0f} of {last:.0f}{stopped}", f"{flat}/{len(selection)}"]


def per_class_rows(results: dict[str, Any], budget: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-class IoU of every segmentation variant (mean over seeds)."""
    headers = ["variant", *SCENE_CLASS_NAMES]
    rows = []
    for name, variant in results["variants"].get("segmentation", {}).items():
        ious = variant["budgets"][budget].get("per_class_iou")
        if ious:
            rows.append([name, *("—" if v is None else f"{v:.3f}" for v in ious)])
    return headers, rows


def weight_change_rows(results: dict[str, Any], budget: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: how far fine-tuning moved each part's weights (relative L2 change, mean over seeds)."""
    parts = ["encoder", "decoder", "decoder.backbone", "head"]
    headers = ["task", "variant", *(f"{p} ‖ΔW‖/‖W₀‖" for p in parts)]
    rows = []
    for task, variants in results["variants"].items():
        for name, variant in variants.items():
            change = variant["budgets"][budget].get("weight_change")
            if change:
                rows.append([task, name, *(f"{change[p]:.3f}" if p in change else "—" for p in parts)])
    return headers, rows


def comparison_rows(comparisons: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of comparisons (``results["comparisons"]`` or a probe's); context comparisons marked."""
    headers = ["task", "labels", "comparison (a vs b)", "metric", "a", "b", "Δ = a − b", "2 × pooled std", "verdict"]
    rows = []
    for c in comparisons:
        pair = f"{c['a']} vs {c['b']}" + ("" if c.get("decisive", True) else " (context)")
        if "missing" in c:
            verdict = f"not measured ({', '.join(c['missing'])} failed)"
            rows.append([c["task"], c["num_train"], pair, c["metric"], "—", "—", "—", "—", verdict])
            continue
        noise = "—" if c["pooled_std"] is None else f"{2 * c['pooled_std']:.4f}"
        if c["exceeds_noise"] is None:
            verdict = "undecided (needs ≥ 2 seeds each)"
        elif c["exceeds_noise"]:
            verdict = f"**{'a' if c['a_better'] else 'b'} better**, beyond noise"
        else:
            verdict = "within noise"
        values = [f"{c['mean_a']:.4f}", f"{c['mean_b']:.4f}", f"{c['delta']:+.4f}", noise]
        rows.append([c["task"], c["num_train"], pair, c["metric"], *values, verdict])
    return headers, rows


def summary_table(results: dict[str, Any]) -> str:
    """The per-variant tables of every task and budget as plain markdown (printed at the end of ``predec demo``)."""
    parts = []
    for task in results["variants"]:
        for budget in _all_budgets(results):
            headers, rows = variant_rows(results, task, budget)
            parts.append(f"{task}, {budget} labelled scenes (mean ± std over seeds):")
            parts.append(markdown_table(headers, rows))
    return "\n\n".join(parts)


def zoo_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the pre-trained weights used (zoo entries)."""
    headers = ["source", "entry", "state", "what", "reached", "steps", "built in", "built on"]
    rows = []
    for source, z in results.get("zoo", {}).items():
        metric = z.get("metric") or {}
        if metric.get("name") == "top1":
            reached = f"top-1 {metric['value']:.3f} ({metric.get('split', 'held-out')})"
        elif metric.get("value") is not None:
            first = metric.get("first")
            reached = (
                f"loss {first:.3f} → {metric['value']:.3f}" if first is not None else f"loss {metric['value']:.3f}"
            )
            tail = z.get("loss_tail_change")
            if tail is not None:
                reached += f" (last tenth: {100 * tail:+.1f} %)"
        else:
            reached = _shorten(z.get("error", "—"), 120)
        machine = z.get("machine") or {}
        where = f"{machine.get('cpu', '?')}, {machine.get('precision', '?')}" if machine else "—"
        built = z.get("wall_seconds")
        rows.append(
            [source, f"`{z['entry']}`", z["state"], z.get("description") or "—", reached, z.get("steps", "—"),
             _seconds(built), where]
        )  # fmt: skip
    return headers, rows


# --------------------------------------------------------------------------------------------------------------
# The markdown report
# --------------------------------------------------------------------------------------------------------------


def settings_lines(results: dict[str, Any]) -> list[str]:
    """The report's settings bullets: weights, data, steps, model selection, seeds, probe, noise rule."""
    s = results["settings"]
    ft = s["finetune"]
    steps = ft["max_steps"]
    steps_text = (
        f"{steps} steps" if isinstance(steps, int) else ", ".join(f"{v} steps at {k} labels" for k, v in steps.items())
    )
    held_out = (
        f"{ft['num_val']} validation scenes (model selection) and {ft['num_test']} test scenes (every number below "
        "unless marked otherwise)"
        if ft.get("num_test")
        else f"{ft['num_val']} held-out scenes"
    )
    schedule = (
        f"constant after a warm-up, × 0.1 after {ft['plateau_patience']} validations without improvement"
        if ft.get("schedule") == "plateau"
        else "poly decay"
    )
    if ft.get("schedule") == "plateau":
        steps_text = steps_text.replace("steps", "steps at most")
    if ft.get("val_every_n_steps"):
        selection = (
            f"validated every {ft['val_every_n_steps']} steps on the task's main metric (mIoU, AbsRel); each run ends "
            "with its best validation's weights"
            + (f" and stops after {ft['patience']} validations without improvement" if ft.get("patience") else "")
        )
    else:
        selection = "each run ends with its last weights"
    seeds = f"seeds {ft['seeds']}" + (
        f" for the variants of a decisive comparison, {ft['reference_seeds']} for the others"
        if ft.get("reference_seeds") is not None
        else ""
    )
    scenes = f", scenes rendered with {ft['scene_options']}" if ft.get("scene_options") else ""
    lines = [
        "- Pre-trained weights: "
        + (
            "rebuilt by this run from the zoo's recipes (`--from-scratch`)."
            if results.get("from_scratch")
            else "predec's model zoo, loaded by name and sha256-checked (no pre-training ran)."
        ),
        f"- Fine-tuning: label budgets {ft['num_train']} labelled scenes (nested: the first N of one set)"
        + "".join(f", {name} also {extra}" for name, extra in (ft.get("extra_num_train") or {}).items())
        + ", "
        f"{ft['image_size'][0]}×{ft['image_size'][1]} px{scenes}; {held_out}; {steps_text} × batch "
        f"{ft['batch_size']}, AdamW lr {ft['lr']} ({schedule}); {selection}; {seeds} (model init and data order; the "
        "data are the same)" + (f"; overrides {ft['overrides']}" if ft["overrides"] else "") + ".",
    ]
    if not ft.get("val_every_n_steps"):
        lines.append(
            "- **Short runs**: every run stops after its fixed number of steps, before its validation curve flattens; "
            "the numbers say how far fine-tuning gets in that budget, not where it converges. The converged study "
            "(validation-selected weights, test scenes, frozen-feature probe) is `predec demo --benchmark`; its "
            "committed report is docs/benchmark_report/report.md."
        )
    probe = s.get("probe") or {}
    if probe.get("variants"):
        lines.append(
            f"- Frozen-feature probe: encoder and decoder as pre-trained (random parts random), frozen; a 1×1 "
            f"classifier / linear depth head on the decoder's output trained on {probe['num_train']} labelled scenes "
            f"({probe['epochs']} epochs, AdamW lr {probe['lr']}, cosine), scored on the held-out scenes; seeds "
            f"{probe['seeds']}."
        )
    lines.append(f"- Noise rule: a difference exceeds the noise if {results['noise_rule']}.")
    lines.append(
        "- Re-running one run: `results.json` → `variants.<task>.<variant>.budgets.<labels>.commands.<seed>` (from the "
        "output directory; the stage's recipe `stages/<stage>/run/config.yaml` into a new run directory)."
    )
    return lines


def probe_rows(results: dict[str, Any], task: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the probe of ``task`` (mean ± std over seeds; training-set fit and convergence)."""
    metrics = TASK_METRICS[task]
    headers = ["variant", "description", *(METRIC_LABELS[m] for m in metrics), "seeds", "probe converged", "state"]
    rows = []
    for name, entry in results["probe"][task]["variants"].items():
        cells = [format_mean_std(entry["mean"].get(m), entry["std"].get(m)) for m in metrics]
        fits = [r["outputs"]["fit"] for r in _probe_records(results, task, name)]
        converged = f"{sum(bool(f.get('converged')) for f in fits)}/{len(fits)}" if fits else "—"
        state = entry["state"]
        if entry["errors"]:
            state += f" ({_shorten(next(iter(entry['errors'].values())), 100)})"
        rows.append([name, entry["description"], *cells, str(len(entry["per_seed"])), converged, state])
    return headers, rows


def _probe_records(results: dict[str, Any], task: str, name: str) -> list[dict[str, Any]]:
    prefix = f"probe/{task}/{name}/"
    return [r for n, r in results["stages"].items() if n.startswith(prefix) and r["state"] in ("done", "cached")]


def scope_lines(results: dict[str, Any]) -> list[str]:
    """What the run can and cannot tell, above its numbers: the quick demo is a smoke test; a run whose fine-tuning
    does not validate (a fixed number of steps) measures how fast each variant starts, not where it ends."""
    ft = results["settings"]["finetune"]
    if results["demo"] == "quick":
        return [
            "**A smoke test, not a result**: tiny sizes, a few steps, one seed — it checks that every stage runs; "
            "its numbers decide nothing. The converged study: `predec demo --benchmark` "
            "(docs/benchmark_report/ in the repository).",
            "",
        ]
    if not ft.get("val_every_n_steps"):
        return [
            f"**Short runs**: every fine-tuning run stops after a fixed {ft['max_steps']} steps, before its validation "
            "plateau, so these numbers say how fast each variant starts, not how good it ends. The converged study "
            "(every run to its plateau, 3 label budgets, 5 seeds): `predec demo --benchmark` "
            "(docs/benchmark_report/ in the repository).",
            "",
        ]
    return []


def report_markdown(results: dict[str, Any], figures: Sequence[Path] = ()) -> str:
    """``report.md``: settings, the zoo entries used, per-variant metrics per label budget, comparisons, the probe,
    per-class IoU, weight changes, failures, timings, figures."""
    s = results["settings"]
    machine = results["machine"]
    command = "predec demo" + {"quick": " --quick", "benchmark": " --benchmark"}.get(results["demo"], "")
    command += " --from-scratch" if results.get("from_scratch") else ""
    lines = [
        f"# predec demo report ({results['demo']})",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `{command}`; wall time {results['total_seconds']:.0f} s on "
        f"{machine['cpu_count']} CPU cores ({s['workers']} worker process(es) × {s['threads_per_worker']} thread(s), "
        f"precision {machine['precision']}); load average (1/5/15 min) {machine['load_average_start']} at the start, "
        f"{machine['load_average_end']} at the end. Every number below is what this run measured.",
        "",
        *scope_lines(results),
        "## Settings",
        "",
        *settings_lines(results),
        "",
        "## Pre-trained weights",
        "",
    ]
    headers, rows = zoo_rows(results)
    lines += [markdown_table(headers, rows) if rows else "(no pre-trained weights used)", ""]
    for task in results["variants"]:
        for budget in _all_budgets(results):
            headers, rows = variant_rows(results, task, budget)
            lines += [f"## {task.capitalize()}, {budget} labelled scenes: mean ± std over seeds", ""]
            lines += [markdown_table(headers, rows), ""]
    lines += ["## Comparisons", "", f"Rule: {results['noise_rule']}.", ""]
    headers, rows = comparison_rows(results["comparisons"])
    lines += [markdown_table(headers, rows), ""]
    for task, probe in (results.get("probe") or {}).items():
        lines += [
            f"## Frozen-feature probe, {task} ({probe['num_train']} labelled scenes): mean ± std over seeds",
            "",
            "Encoder and decoder frozen as pre-trained; only a linear map on the decoder's output is trained. What "
            "pre-training put into the decoder, without fine-tuning washing it out.",
            "",
        ]
        headers, rows = probe_rows(results, task)
        lines += [markdown_table(headers, rows), ""]
        if probe["comparisons"]:
            headers, rows = comparison_rows(probe["comparisons"])
            lines += [markdown_table(headers, rows), ""]
    for budget in _budgets(results):
        headers, rows = per_class_rows(results, budget)
        if rows:
            lines += [
                f"## Per-class IoU, {budget} labelled scenes (mean over seeds)",
                "",
                markdown_table(headers, rows),
            ]
            lines.append("")
    headers, rows = weight_change_rows(results, _budgets(results)[-1])
    if rows:
        lines += [
            f"## How far fine-tuning moved the weights ({_budgets(results)[-1]} labelled scenes, mean over seeds)",
            "",
            "Relative L2 change ‖W_final − W_init‖ / ‖W_init‖ of each part's weights (BatchNorm statistics excluded); "
            "`decoder.backbone` is ×Net's decoder backbone (the pre-trained classifier when pre-trained).",
            "",
            markdown_table(headers, rows),
            "",
        ]
    failed = [(n, r) for n, r in results["stages"].items() if r["state"] in ("failed", "skipped", "not run")]
    if failed:
        lines += ["## Failed stages", ""]
        rows = [[n, r["state"], _shorten(r.get("error") or "", 300)] for n, r in failed]
        lines += [markdown_table(["stage", "state", "error"], rows), ""]
    lines += ["## Timings per stage", ""]
    rows = [[n, r["state"], _seconds(r.get("seconds"))] for n, r in results["stages"].items()]
    total = sum(r.get("seconds") or 0.0 for r in results["stages"].values())
    lines += [
        markdown_table(["stage", "state", "time"], rows),
        "",
        f"Sum of the stage times: {total:.0f} s ({total / 3600:.2f} h of one worker). (Cached stages show the time of "
        "the run that made them.)",
        "",
    ]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({p.name})" for p in figures]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------


def colorize_labels(labels: Any) -> Any:
    """(H, W) class indices → (H, W, 3) uint8 colours: the VOC palette of ``predec predict``'s label PNGs and
    overlays (one palette everywhere; 255, ignored, is VOC's light grey)."""
    import numpy as np

    from predec.data.io import voc_palette

    return voc_palette(256)[np.asarray(labels, dtype=np.uint8)]


def prediction_grid(
    images: Sequence[Any], targets: Sequence[Any], predictions: dict[str, Any], task: str, path: Path
) -> Path:
    """PNG grid: one row per image; columns image, ground truth, then each variant's prediction.

    Args:
        images: (H, W, 3) uint8 arrays.
        targets: (H, W) label maps (segmentation) or depth maps in metres (0 = invalid).
        predictions: variant name → (N, H, W) array of predicted labels or depths.
        task: ``segmentation`` or ``depth``.
        path: PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["image", "ground truth", *predictions]
    rows = len(images)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows + 0.4), squeeze=False)
    for r in range(rows):
        panels = [images[r], targets[r], *(p[r] for p in predictions.values())]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if c == 0:
                ax.imshow(panel)
            elif task == "segmentation":
                ax.imshow(colorize_labels(panel), interpolation="nearest")
            else:
                ax.imshow(panel.astype("float32"), cmap="magma_r", vmin=0.0, vmax=10.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=7)
    fig.suptitle(f"{task}: evaluation scenes (first seed of each variant)", fontsize=9)
    if task == "segmentation":
        from matplotlib.patches import Patch

        from predec.data.io import voc_palette

        palette = voc_palette(len(SCENE_CLASS_NAMES))
        handles = [Patch(color=palette[k] / 255, label=name) for k, name in enumerate(SCENE_CLASS_NAMES)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
        return save_figure(fig, path, rect=(0, 0.05, 1, 1))
    fig.tight_layout(rect=(0, 0.12, 1, 1))  # room below for the colour bar, added after the layout
    scale = plt.cm.ScalarMappable(plt.Normalize(0.0, 10.0), "magma_r")
    bar = fig.colorbar(scale, cax=fig.add_axes((0.3, 0.085, 0.4, 0.015)), orientation="horizontal")
    bar.set_label("depth (m)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return save_figure(fig, path, layout=False)


def save_figure(
    fig: Any, path: Path, rect: tuple[float, float, float, float] | None = None, layout: bool = True
) -> Path:
    """Lay out ``fig`` (inside ``rect``, figure fractions, if given; ``layout=False``: as it is), write it as a PNG at
    ``path`` (folders created, 110 dpi), close it and return ``path``."""
    import matplotlib.pyplot as plt

    if layout:
        fig.tight_layout(rect=rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(curves: dict[str, list[list[list[float]]]], path: Path, title: str, ylabel: str) -> Path:
    """PNG of the training loss against the step, one colour per variant, one line per seed.

    Args:
        curves: variant name → one ``[[step, loss], ...]`` curve per seed (the stages' ``train_curve``).
        path: PNG file to write.
        title: figure title.
        ylabel: what the loss is.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    colors = plt.get_cmap("tab10")
    for i, (name, runs) in enumerate(curves.items()):
        for j, curve in enumerate(runs):
            if curve:
                steps, values = zip(*curve)
                ax.plot(steps, values, color=colors(i % 10), alpha=0.8, lw=1, label=name if j == 0 else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def validation_curves(results: dict[str, Any], task: str, path: Path) -> Path | None:
    """PNG: the monitored validation metric against the step, one panel per label budget, one colour per variant,
    one line per seed, the chosen step of each run marked with a dot. None when no run was validated along the way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = _all_budgets(results)
    runs: dict[str, dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]] = {b: {} for b in budgets}
    for name in results["variants"][task]:
        for budget in budgets:
            for seed in results["variants"][task][name].get("seeds", results["settings"]["finetune"]["seeds"]):
                record = results["stages"].get(finetune_stage_name(task, name, int(budget), seed), {})
                outputs = record.get("outputs") or {}
                if record.get("state") in ("done", "cached") and outputs.get("selection"):
                    runs[budget].setdefault(name, []).append((outputs["val_history"], outputs["selection"]))
    if not any(runs.values()):
        return None
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    names = list(results["variants"][task])
    monitor = ""
    for ax, budget in zip(axes[0], budgets):
        for name, seeds in runs[budget].items():
            color = colors(names.index(name) % 10)
            for j, (history, selection) in enumerate(seeds):
                monitor = selection["monitor"]
                points = sorted((int(k), v[monitor]) for k, v in history.items() if monitor in v)
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, color=color, lw=0.9, alpha=0.75, label=name if j == 0 else None)
                    ax.plot([selection["step"]], [selection["score"]], "o", color=color, ms=3)
        ax.set_title(f"{budget} labelled scenes", fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"validation {monitor.removeprefix('val/')}")
    axes[0][-1].legend(fontsize=6, ncol=1)
    fig.suptitle(f"{task}: validation curves (dot: the step each run ends with)", fontsize=9)
    return save_figure(fig, path)


def label_efficiency(results: dict[str, Any], task: str, metric: str, path: Path) -> Path:
    """PNG: ``metric`` (mean ± std over seeds) against the number of labelled scenes, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [int(b) for b in _all_budgets(results)]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    colors = plt.get_cmap("tab10")
    for i, (name, variant) in enumerate(results["variants"][task].items()):
        points = [
            (int(n), entry["mean"].get(metric), entry["std"].get(metric))
            for n, entry in sorted(variant["budgets"].items(), key=lambda item: int(item[0]))
        ]
        points = [(n, m, s or 0.0) for n, m, s in points if m is not None]
        if points:
            xs, ms, ss = zip(*points)
            ax.errorbar(xs, ms, yerr=ss, color=colors(i % 10), marker="o", ms=3, lw=1.2, capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(budgets), [str(n) for n in sorted(budgets)])
    ax.set_xlabel("labelled training scenes")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(f"{task}: {metric} vs labels (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def demo_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """Prediction grids and training curves of every task (largest label budget, the variants that produced them),
    validation curves (runs that selected their weights), and the label-efficiency curves when several budgets
    ran."""
    import numpy as np

    from predec.data.synthetic import SynthScenes

    ft = results["settings"]["finetune"]
    budget = int(_budgets(results)[-1])
    paths = []
    for task, entries in results["variants"].items():
        predictions, curves = {}, {}
        for name, entry in entries.items():
            runs = []
            for seed in entry.get("seeds", ft["seeds"]):
                record = results["stages"].get(finetune_stage_name(task, name, budget, seed), {})
                outputs = record.get("outputs") or {}
                if record.get("state") not in ("done", "cached"):
                    continue
                runs.append(outputs.get("train_curve") or [])
                stage_dir = out / "stages" / finetune_stage_name(task, name, budget, seed)
                file = stage_dir / outputs["predictions"] if outputs.get("predictions") else Path()
                if name not in predictions and file.is_file():
                    predictions[name] = np.load(file)["prediction"]
            if runs:
                curves[name] = runs
        if predictions:
            count = min(len(p) for p in predictions.values())
            held_out = 2 if ft.get("num_test") else 1  # the test scenes (seed + 2), else the validation scenes
            scenes = SynthScenes(
                count,
                size=tuple(ft["image_size"]),
                seed=labelled_seed(results["settings"]["data_seed"]) + held_out,
                **(ft.get("scene_options") or {}),
            )
            raws = [scenes.raw(i) for i in range(count)]
            targets = [r.labels if task == "segmentation" else r.depth for r in raws]
            grid = {k: v[:count] for k, v in predictions.items()}
            paths.append(prediction_grid([r.image for r in raws], targets, grid, task, out / f"predictions_{task}.png"))
        if curves:
            loss = "cross-entropy" if task == "segmentation" else "SILog"
            title = f"{task}: training loss, {budget} labelled scenes"
            paths.append(training_curves(curves, out / f"curves_{task}.png", title, loss))
        validation = validation_curves(results, task, out / f"validation_{task}.png")
        if validation is not None:
            paths.append(validation)
        if len(ft["num_train"]) > 1:
            for metric in TASK_METRICS[task][:1]:
                paths.append(label_efficiency(results, task, metric, out / f"labels_{task}_{metric}.png"))
    return paths


def write_all(results: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``results.json``, the figures and ``report.md`` into ``out``; return their paths."""
    out = Path(out)
    results_path = write_json(out / "results.json", results)
    try:
        figures = demo_figures(results, out)
    except Exception as err:  # a figure must not lose the measured results
        figures = []
        results.setdefault("report_errors", []).append(f"figures: {type(err).__name__}: {err}")
        write_json(results_path, results)
    report = atomic_write_text(out / "report.md", report_markdown(results, figures))
    return [report, results_path, *figures]

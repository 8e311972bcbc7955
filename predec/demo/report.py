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
from predec.engine.run_dir import read_csv_metric, write_json

METRIC_LABELS: dict[str, str] = {
    "mIoU": "mIoU ↑",
    "aAcc": "aAcc ↑",
    "abs_rel": "AbsRel ↓",
    "rmse": "RMSE ↓",
    "d1": "δ1 ↑",
}
SCENE_CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "sphere", "box", "cylinder", "cone")
"""SynthScenes' classes in label order (``predec.data.synthetic.SCENE_CLASSES``; checked by a test)."""
SEGMENTATION_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),  # floor
    (230, 200, 140),  # wall
    (220, 50, 50),  # sphere
    (50, 120, 220),  # box
    (60, 180, 75),  # cylinder
    (245, 130, 48),  # cone
)
"""Colours of SynthScenes' classes in the prediction grids (ignored pixels are black)."""


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
    return [str(n) for n in results["settings"]["finetune"]["num_train"]]


def variant_rows(results: dict[str, Any], task: str, budget: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-variant table of ``task`` at label budget ``budget`` (mean ± std over seeds)."""
    metrics = TASK_METRICS[task]
    headers = ["variant", "description", *(METRIC_LABELS[m] for m in metrics), "seeds", "state"]
    rows = []
    for name, variant in results["variants"][task].items():
        entry = variant["budgets"][budget]
        cells = [format_mean_std(entry["mean"].get(m), entry["std"].get(m)) for m in metrics]
        state = entry["state"]
        if entry["errors"]:
            state += f" ({_shorten(next(iter(entry['errors'].values())), 100)})"
        rows.append([name, variant["description"], *cells, str(len(entry["per_seed"])), state])
    return headers, rows


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


def comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the decisive comparisons."""
    headers = ["task", "labels", "comparison (a vs b)", "metric", "a", "b", "Δ = a − b", "2 × pooled std", "verdict"]
    rows = []
    for c in results["comparisons"]:
        pair = f"{c['a']} vs {c['b']}"
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
        for budget in _budgets(results):
            headers, rows = variant_rows(results, task, budget)
            parts.append(
                f"{task}, {budget} labelled scenes (mean ± std over seeds {results['settings']['finetune']['seeds']}):"
            )
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


def report_markdown(results: dict[str, Any], figures: Sequence[Path] = ()) -> str:
    """``report.md``: settings, the zoo entries used, per-variant metrics per label budget, comparisons, per-class
    IoU, weight changes, failures, timings, figures."""
    s = results["settings"]
    ft = s["finetune"]
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
        "## Settings",
        "",
        "- Pre-trained weights: "
        + (
            "rebuilt by this run from the zoo's recipes (`--from-scratch`)."
            if results.get("from_scratch")
            else "predec's model zoo, loaded by name and sha256-checked (no pre-training ran)."
        ),
        f"- Fine-tuning: label budgets {ft['num_train']} labelled scenes (nested: the first N of one set), evaluated "
        f"on {ft['num_val']} held-out scenes, {ft['image_size'][0]}×{ft['image_size'][1]} px, {ft['max_steps']} steps "
        f"× batch {ft['batch_size']}, AdamW lr {ft['lr']} (poly decay), seeds {ft['seeds']} (model init and data "
        "order; the data are the same)" + (f", overrides {ft['overrides']}" if ft["overrides"] else "") + ".",
        f"- Noise rule: a difference exceeds the noise if {results['noise_rule']}.",
        "",
        "## Pre-trained weights",
        "",
    ]
    headers, rows = zoo_rows(results)
    lines += [markdown_table(headers, rows) if rows else "(no pre-trained weights used)", ""]
    for task in results["variants"]:
        for budget in _budgets(results):
            headers, rows = variant_rows(results, task, budget)
            lines += [f"## {task.capitalize()}, {budget} labelled scenes: mean ± std over seeds", ""]
            lines += [markdown_table(headers, rows), ""]
    lines += ["## Decisive comparisons", "", f"Rule: {results['noise_rule']}.", ""]
    headers, rows = comparison_rows(results)
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
    lines += [
        markdown_table(["stage", "state", "time"], rows),
        "",
        "(cached stages show the time of the run that made them.)",
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
    """(H, W) class indices → (H, W, 3) uint8 colours (:data:`SEGMENTATION_COLORS`; others black)."""
    import numpy as np

    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(SEGMENTATION_COLORS)] = SEGMENTATION_COLORS
    return palette[np.asarray(labels, dtype=np.uint8)]


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(curves: dict[str, list[Path]], path: Path, title: str, column: str = "train/loss") -> Path:
    """PNG of ``column`` against the step, one colour per variant, one line per seed.

    Args:
        curves: variant name → CSV logs (``metrics.csv``) of its seeds.
        path: PNG file to write.
        title: figure title.
        column: the logged quantity.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    colors = plt.get_cmap("tab10")
    for i, (name, files) in enumerate(curves.items()):
        for j, file in enumerate(files):
            steps, values = read_csv_metric(file, column)
            if steps:
                ax.plot(steps, values, color=colors(i % 10), alpha=0.8, lw=1, label=name if j == 0 else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(column)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label_efficiency(results: dict[str, Any], task: str, metric: str, path: Path) -> Path:
    """PNG: ``metric`` (mean ± std over seeds) against the number of labelled scenes, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [int(b) for b in _budgets(results)]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    colors = plt.get_cmap("tab10")
    for i, (name, variant) in enumerate(results["variants"][task].items()):
        points = [
            (n, variant["budgets"][str(n)]["mean"].get(metric), variant["budgets"][str(n)]["std"].get(metric))
            for n in budgets
        ]
        points = [(n, m, s or 0.0) for n, m, s in points if m is not None]
        if points:
            xs, ms, ss = zip(*points)
            ax.errorbar(xs, ms, yerr=ss, color=colors(i % 10), marker="o", ms=3, lw=1.2, capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(n) for n in budgets])
    ax.set_xlabel("labelled training scenes")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title(
        f"{task}: {metric} vs labels (mean ± std over seeds {results['settings']['finetune']['seeds']})", fontsize=9
    )
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def demo_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """Prediction grids and training curves of every task (largest label budget, the variants that produced them),
    and the label-efficiency curves when several budgets ran."""
    import numpy as np

    from predec.data.synthetic import SynthScenes

    ft = results["settings"]["finetune"]
    seeds = ft["seeds"]
    budget = int(_budgets(results)[-1])
    paths = []
    for task, entries in results["variants"].items():
        predictions, curves = {}, {}
        for name in entries:
            files = []
            for seed in seeds:
                record = results["stages"].get(finetune_stage_name(task, name, budget, seed), {})
                out_files = record.get("outputs") or {}
                if record.get("state") not in ("done", "cached"):
                    continue
                if out_files.get("csv") and Path(out_files["csv"]).is_file():
                    files.append(Path(out_files["csv"]))
                file = Path(out_files.get("predictions") or "")
                if name not in predictions and file.is_file():
                    predictions[name] = np.load(file)["prediction"]
            if files:
                curves[name] = files
        if predictions:
            count = min(len(p) for p in predictions.values())
            scenes = SynthScenes(
                count, size=tuple(ft["image_size"]), seed=labelled_seed(results["settings"]["data_seed"]) + 1
            )
            raws = [scenes.raw(i) for i in range(count)]
            targets = [r.labels if task == "segmentation" else r.depth for r in raws]
            grid = {k: v[:count] for k, v in predictions.items()}
            paths.append(prediction_grid([r.image for r in raws], targets, grid, task, out / f"predictions_{task}.png"))
        if curves:
            loss = "cross-entropy" if task == "segmentation" else "SILog"
            title = f"{task}: training loss ({loss}), {budget} labelled scenes"
            paths.append(training_curves(curves, out / f"curves_{task}.png", title))
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

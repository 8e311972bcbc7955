"""Reports: markdown / JSON tables and PNG figures (prediction grids, training curves) of demo results.

Everything here reads the results dictionary of :func:`predec.demo.collect_results` (the content of
``results.json``) and the files its stages wrote; numbers are printed as the runs produced them.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predec.engine.run_dir import atomic_write_text, write_json

METRIC_LABELS: dict[str, str] = {
    "mIoU": "mIoU ↑",
    "aAcc": "aAcc ↑",
    "abs_rel": "AbsRel ↓",
    "rmse": "RMSE ↓",
    "d1": "δ1 ↑",
}
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


def variant_rows(results: dict[str, Any], task: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-variant table of ``task`` (mean ± std over the seeds that finished)."""
    from predec.demo import TASK_METRICS

    metrics = TASK_METRICS[task]
    headers = ["variant", "description", *(METRIC_LABELS[m] for m in metrics), "seeds", "state"]
    rows = []
    for name, entry in results["variants"][task].items():
        cells = [format_mean_std(entry["mean"].get(m), entry["std"].get(m)) for m in metrics]
        state = entry["state"]
        if entry["errors"]:
            first = next(iter(entry["errors"].values()))
            state += f" ({_shorten(first, 100)})"
        rows.append([name, entry["description"], *cells, str(len(entry["per_seed"])), state])
    return headers, rows


def comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the decisive comparisons."""
    headers = ["task", "comparison (a vs b)", "metric", "a", "b", "Δ = a − b", "2 × pooled std", "verdict"]
    rows = []
    for c in results["comparisons"]:
        if "missing" in c:
            verdict = f"not measured ({', '.join(c['missing'])} failed)"
            rows.append([c["task"], f"{c['a']} vs {c['b']}", c["metric"], "—", "—", "—", "—", verdict])
            continue
        noise = "—" if c["pooled_std"] is None else f"{2 * c['pooled_std']:.4f}"
        if c["exceeds_noise"] is None:
            verdict = "undecided (needs ≥ 2 seeds each)"
        elif c["exceeds_noise"]:
            verdict = f"**{'a' if c['a_better'] else 'b'} better**, beyond noise"
        else:
            verdict = "within noise"
        rows.append(
            [
                c["task"],
                f"{c['a']} vs {c['b']}",
                c["metric"],
                f"{c['mean_a']:.4f}",
                f"{c['mean_b']:.4f}",
                f"{c['delta']:+.4f}",
                noise,
                verdict,
            ]
        )
    return headers, rows


def summary_table(results: dict[str, Any]) -> str:
    """The per-variant tables of every task as plain markdown (printed at the end of ``predec demo``)."""
    parts = []
    for task in results["variants"]:
        headers, rows = variant_rows(results, task)
        parts.append(f"{task} (mean ± std over seeds {results['settings']['finetune']['seeds']}):")
        parts.append(markdown_table(headers, rows))
    return "\n\n".join(parts)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------------------
# The markdown report
# --------------------------------------------------------------------------------------------------------------


def report_markdown(results: dict[str, Any], figures: Sequence[Path] = ()) -> str:
    """``report.md``: settings, seeds, pre-training results, per-variant metrics, comparisons, failures, timings."""
    s = results["settings"]
    cls, ssl, ft = s["classification"], s["ssl"], s["finetune"]
    machine = results["machine"]
    lines = [
        f"# predec demo report ({results['demo']})",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `predec demo{' --quick' if results['demo'] == 'quick' else ''}`"
        f"; wall time {results['total_seconds']:.0f} s on {machine['cpu_count']} CPU cores ({s['workers']} worker "
        f"process(es) × {s['threads_per_worker']} thread(s), precision {machine['precision']}); load average "
        f"(1/5/15 min) {machine['load_average_start']} at the start, {machine['load_average_end']} at the end. "
        "Every number below is what this run measured.",
        "",
        "## Settings",
        "",
        f"- Backbones: encoder `{s['encoder']}`, ×Net decoder `{s['decoder']}` (timm; random init before the "
        "pre-training below).",
        f"- Classification pre-training: SynthObjects `{cls['label_mode']}` labels, {cls['num_train']} training / "
        f"{cls['num_val']} held-out images of {cls['image_size']} px, {cls['max_steps']} steps × batch "
        f"{cls['batch_size']}, lr {cls['lr']}.",
        f"- Self-supervised pre-training (SlotCon, DeCon-SL, DeCon-ML): {ssl['num_images']} unlabeled scenes of "
        f"{ssl['image_size']} px, two {ssl['view_size']}-px views, {ssl['max_steps']} steps × batch {ssl['batch_size']}"
        f", K = {ssl['num_prototypes']} prototypes, projector {ssl['hidden_dim']} → {ssl['dim']}. "
        + (
            "Every SSL method starts from the same classification-pretrained encoder, so the comparison isolates "
            "what pre-training the decoder adds (DeCon) over pre-training the encoder alone (SlotCon)."
            if ssl["encoder_from_classification"]
            else "Every SSL method starts from a random encoder."
        ),
        f"- Fine-tuning: {ft['num_train']} labelled scenes, evaluated on {ft['num_val']} held-out scenes, "
        f"{ft['image_size'][0]}×{ft['image_size'][1]} px, {ft['max_steps']} steps × batch {ft['batch_size']}, AdamW "
        f"lr {ft['lr']} (poly decay), seeds {ft['seeds']} (model init and data order; the data are the same).",
        f"- Noise rule: a difference exceeds the noise if {results['noise_rule']}.",
        "",
    ]
    lines += ["## Backbone pre-training (classification on SynthObjects)", ""]
    rows = []
    for backbone, record in results["pretraining"]["classification"].items():
        out = record.get("outputs") or {}
        accuracy = out.get("accuracy")
        rows.append(
            [
                backbone,
                record["state"],
                "—" if accuracy is None else f"{accuracy:.3f}",
                out.get("num_classes", "—"),
                out.get("steps", "—"),
                _seconds(record.get("seconds")),
                _shorten(record.get("error") or "", 160),
            ]
        )
    lines += [markdown_table(["backbone", "state", "top-1 (held-out)", "classes", "steps", "time", "error"], rows), ""]
    lines += ["## Self-supervised pre-training", ""]
    rows = []
    for method, record in results["pretraining"]["ssl"].items():
        out = record.get("outputs") or {}
        loss = out.get("final_loss")
        rows.append(
            [
                method,
                record["state"],
                "—" if loss is None else f"{loss:.4f}",
                "—" if out.get("initial_loss") is None else f"{out['initial_loss']:.4f}",
                out.get("steps", "—"),
                _seconds(record.get("seconds")),
                _shorten(record.get("error") or "", 160),
            ]
        )
    lines += [markdown_table(["method", "state", "final loss", "first loss", "steps", "time", "error"], rows), ""]
    for task in results["variants"]:
        headers, rows = variant_rows(results, task)
        lines += [f"## {task.capitalize()}: mean ± std over seeds", "", markdown_table(headers, rows), ""]
    lines += ["## Decisive comparisons", "", f"Rule: {results['noise_rule']}.", ""]
    headers, rows = comparison_rows(results)
    lines += [markdown_table(headers, rows), ""]
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


def read_csv_metric(path: str | Path, column: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``column`` in a Lightning CSV log (rows without a value skipped)."""
    steps, values = [], []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            value = row.get(column)
            if value not in (None, "") and row.get("step") not in (None, ""):
                steps.append(int(float(row["step"])))
                values.append(float(value))
    return steps, values


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


def demo_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """Prediction grids and training curves of every task (variants that produced them)."""
    import numpy as np

    from predec.data.synthetic import SynthScenes
    from predec.demo import _labelled_seed

    ft = results["settings"]["finetune"]
    seeds = [str(s) for s in ft["seeds"]]
    paths = []
    for task, entries in results["variants"].items():
        predictions, curves = {}, {}
        for name in entries:
            files = []
            for seed in seeds:
                record = results["stages"].get(f"finetune/{task}/{name}/seed{seed}", {})
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
                count, size=tuple(ft["image_size"]), seed=_labelled_seed(results["settings"]["data_seed"]) + 1
            )
            raws = [scenes.raw(i) for i in range(count)]
            targets = [r.labels if task == "segmentation" else r.depth for r in raws]
            grid = {k: v[:count] for k, v in predictions.items()}
            paths.append(prediction_grid([r.image for r in raws], targets, grid, task, out / f"predictions_{task}.png"))
        if curves:
            loss = "cross-entropy" if task == "segmentation" else "SILog"
            paths.append(training_curves(curves, out / f"curves_{task}.png", f"{task}: training loss ({loss})"))
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

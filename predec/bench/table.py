"""The benchmark report as a Markdown table."""

from __future__ import annotations

from typing import Any

from predec.bench.runs import BenchReport


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _reference_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["model"], "train" if row["mode"] == "train" else "infer"


def format_table(report: BenchReport) -> str:
    """The report as a markdown table under two header lines (device, input, matmul peaks, default precision).

    ``vs eager fp32``: images/s ÷ those of plain eager PyTorch in fp32 for the same model: its ``train`` row for
    training, its ``infer`` row for infer/compile/onnx; NCHW where measured, else channels_last.
    ``Δ MB``: peak memory − memory at the start of the measured span (activations, gradients, optimiser state,
    workspaces; see :class:`BenchConfig`).
    """
    s = report.settings
    peaks = ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in report.peak_gflop_per_s.items())
    machine = report.machine.get("gpu") or report.machine["cpu"]
    lines = [
        f"Device: {machine} ({report.machine['device']}, {report.machine['threads']} threads) · "
        f"input {s['batch']}×3×{s['height']}×{s['width']} · task {s['task']} · "
        f"{s['steps']} timed steps after {s['warmup']} warm-up",
        f"Matmul peak ({s['matmul_size']}², same run): {peaks} · predec default precision: {report.default_precision}",
        "",
        "| model | mode | precision | channels_last | params (M) | GFLOPs/img | img/s | vs eager fp32 | step ms | MFU "
        "| peak MB | Δ MB | setup s |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    reference: dict[tuple[str, str], float] = {}
    for cl in (True, False):  # NCHW last, so that it wins where both were measured
        for r in report.results:
            plain = r["status"] == "ok" and r["precision"] == "fp32" and r["mode"] in ("train", "infer")
            if plain and r["channels_last"] is cl:
                reference[_reference_key(r)] = r["images_per_s"]
    for r in report.results:
        cl = "—" if r["channels_last"] is None else ("on" if r["channels_last"] else "off")
        head = f"| {r['model']} | {r['mode']} | {r['precision']} | {cl} |"
        if r["status"] != "ok":
            lines.append(f"{head} failed: {str(r['error']).splitlines()[-1][:80]} |||||||||")
            continue
        ref = reference.get(_reference_key(r))
        ratio = f"{r['images_per_s'] / ref:.2f}×" if ref else "—"
        delta = None if r["setup_mem_mb"] is None else r["peak_mem_mb"] - r["setup_mem_mb"]
        lines.append(
            f"{head} {r['params'] / 1e6:.2f} | {r['gflops_per_image']:.2f} | {r['images_per_s']:.1f} | {ratio} | "
            f"{r['step_ms_median']:.0f} | {100 * r['mfu']:.1f}% | {_fmt(r['peak_mem_mb'], 0)} | {_fmt(delta, 0)} | "
            f"{_fmt(r['setup_s'], 1)} |"
        )
    return "\n".join(lines)

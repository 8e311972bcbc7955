"""The benchmark run: plan the configurations, measure each in a fresh process, collect the report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from predec.bench.hardware import bf16_runs, cpu_flags, default_precision, matmul_peak_flops
from predec.bench.measure import failed_row, measure
from predec.bench.spec import BF16_CPU_FLAGS, DEFAULT_MODELS, MODES, PRECISIONS, BenchConfig, parse_model_spec


def measure_in_process(c: BenchConfig) -> list[dict[str, Any]]:
    start = time.perf_counter()
    try:
        return measure(c)
    except Exception as err:  # a failing model must not stop the other configurations
        error = f"{type(err).__name__}: {err}"
        return [failed_row(c, mode, error, time.perf_counter() - start) for mode in MODES if mode in c.modes]


def measure_isolated(c: BenchConfig, timeout: float = 1800.0) -> list[dict[str, Any]]:
    """Run :func:`measure` in a fresh Python process (``python -m predec.bench``), so that its memory is its own;
    a crash or timeout gives rows with ``status="failed"`` and the error text."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="predec-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "predec.bench", json.dumps(asdict(c)), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            error = None
            if proc.returncode != 0 or not out.is_file():
                error = f"exit code {proc.returncode}: " + "\n".join(proc.stderr.strip().splitlines()[-5:])
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
        if error:
            return [failed_row(c, mode, error, time.perf_counter() - start) for mode in MODES if mode in c.modes]
        return json.loads(out.read_text())


def plan_configs(
    models: Sequence[str],
    modes: Sequence[str],
    precisions: Sequence[str],
    channels_last: Sequence[bool],
    **settings: Any,
) -> list[BenchConfig]:
    """The configurations of a run: model × precision × channels_last, each with ``modes``; ``onnx`` (always the
    fp32 NCHW export) only in each model's first configuration.

    Args:
        models: model spec texts.
        modes: subset of :data:`MODES`.
        precisions: subset of :data:`PRECISIONS`.
        channels_last: memory formats to try (``[False]``, ``[True]`` or both).
        **settings: the other :class:`BenchConfig` fields (size, batch, task, steps, ...).
    """
    for name, values, valid in (("mode", modes, MODES), ("precision", precisions, PRECISIONS)):
        bad = [v for v in values if v not in valid]
        if bad or not values:
            raise ValueError(f"Bad {name}s {list(values)}; choose from {', '.join(valid)}.")
    if not channels_last:
        raise ValueError("channels_last needs at least one memory format (True, False or both).")
    plan = []
    for text in models:
        parse_model_spec(text)  # fail before any measurement runs
        first = True
        for precision in precisions:
            for cl in channels_last:
                config_modes = tuple(m for m in modes if m != "onnx" or first)
                if config_modes:
                    plan.append(BenchConfig(text, config_modes, precision, cl, **settings))
                first = False
    return plan


@dataclass
class BenchReport:
    """Everything one ``predec bench`` run measured (``to_json`` gives the JSON file's content).

    Attributes:
        machine: CPU name, bf16-relevant flags, device, threads, library versions, load average at start and end.
        settings: input size, batch, task, steps, warm-up, matmul size.
        default_precision: :func:`default_precision` on the device.
        peak_gflop_per_s: matmul peak per precision, the better of the two measurements (MFU's denominator).
        peak_gflop_per_s_runs: the matmul peak measured before and after the measurements.
        results: one row per measurement (keys :data:`RESULT_FIELDS` + ``achieved_gflop_per_s`` +
            ``images_per_s_rounds``).
    """

    machine: dict[str, Any]
    settings: dict[str, Any]
    default_precision: str
    peak_gflop_per_s: dict[str, float] = field(default_factory=dict)
    peak_gflop_per_s_runs: dict[str, list[float]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2)


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU/GPU name, bf16-relevant CPU flags, threads and library versions."""
    import onnxruntime
    import timm

    from predec.engine.trainer import cpu_name

    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "bf16_cpu_flags": {flag: flag in flags for flag in BF16_CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
        "threads": threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    modes: Sequence[str] = ("train", "infer", "onnx"),
    precisions: Sequence[str] | None = None,
    channels_last: Sequence[bool] = (True,),
    height: int = 128,
    width: int = 128,
    batch: int = 2,
    task: str = "segmentation",
    num_classes: int = 21,
    steps: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    compile_backend: str = "inductor",
    matmul_size: int | None = None,
    matmul_seconds: float = 2.0,
    repeats: int = 1,
    isolate: bool = True,
    timeout: float = 1800.0,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure every model × precision × memory format × mode and the matmul peaks; fill in MFU.

    Args:
        models: model specs ``arch:encoder[:decoder]``.
        modes: subset of :data:`MODES`.
        precisions: subset of :data:`PRECISIONS`; None = ``fp32`` and ``bf16`` where bf16 runs at all.
        channels_last: memory formats to measure.
        height: input height (a multiple of the model's output stride).
        width: input width.
        batch: images per step.
        task: ``segmentation`` or ``depth``.
        num_classes: segmentation classes.
        steps: timed steps per measurement.
        warmup: untimed steps before them.
        threads: CPU threads; None = ``torch.get_num_threads()``.
        device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (cuda if available).
        compile_backend: ``torch.compile`` backend of the ``compile`` mode.
        matmul_size: matrix side of the peak measurement; None = 2048 on CPU, 8192 on CUDA.
        matmul_seconds: seconds per dtype of each peak measurement (one before the measurements, one after; the
            better one counts, so that a busy moment on a shared machine does not lower the peak).
        repeats: rounds over the whole plan (interleaved, so that a busy spell on a shared machine hits all
            configurations alike); each row is its fastest round, ``images_per_s_rounds`` lists all.
        isolate: one fresh process per measurement (honest peak memory); False runs them in this process.
        timeout: seconds allowed per isolated measurement.
        progress: called with a line of text before each measurement.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    threads = threads or torch.get_num_threads()
    if precisions is None:
        precisions = ["fp32", "bf16"] if bf16_runs(dev) else ["fp32"]
    if "bf16" in precisions and not bf16_runs(dev):
        raise ValueError(f"bf16 autocast does not run on {device}; use --precision fp32.")
    matmul_size = matmul_size or (8192 if dev.type == "cuda" else 2048)
    settings = dict(
        height=height,
        width=width,
        batch=batch,
        task=task,
        num_classes=num_classes,
        steps=steps,
        warmup=warmup,
        threads=threads,
        device=device,
        compile_backend=compile_backend,
    )
    plan = plan_configs(models, modes, precisions, channels_last, **settings)
    machine = machine_info(dev, threads)
    machine["loadavg_start"] = list(os.getloadavg())
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    needed = sorted({c.precision for c in plan} | ({"fp32"} if "onnx" in modes else set()))

    def measure_peaks() -> None:
        for p in needed:
            peak = matmul_peak_flops(dtypes[p], dev, matmul_size, matmul_seconds, threads) / 1e9
            report.peak_gflop_per_s_runs.setdefault(p, []).append(peak)

    report = BenchReport(
        machine=machine,
        settings={**settings, "matmul_size": matmul_size, "repeats": repeats, "isolated": isolate},
        default_precision=default_precision(dev),
    )
    measure_peaks()
    rounds: list[list[list[dict[str, Any]]]] = [[] for _ in plan]
    for repeat in range(1, repeats + 1):
        for index, c in enumerate(plan):
            if progress:
                cl = "channels_last" if c.channels_last else "NCHW"
                progress(
                    f"[{repeat}/{repeats}: {index + 1}/{len(plan)}] {c.model} {c.precision} {cl}: {' '.join(c.modes)}"
                )
            rounds[index].append(measure_isolated(c, timeout) if isolate else measure_in_process(c))
    for config_rounds in rounds:
        for mode_rows in zip(*config_rounds):  # the same mode in each round
            ok = [row for row in mode_rows if row["status"] == "ok"]
            best = max(ok, key=lambda row: row["images_per_s"]) if ok else mode_rows[-1]
            best["images_per_s_rounds"] = [row["images_per_s"] for row in ok]
            report.results.append(best)
    measure_peaks()
    report.peak_gflop_per_s = {p: max(runs) for p, runs in report.peak_gflop_per_s_runs.items()}
    for row in report.results:
        if row["status"] == "ok":
            row["mfu"] = row["achieved_gflop_per_s"] / report.peak_gflop_per_s[row["precision"]]
    report.machine["loadavg_end"] = list(os.getloadavg())
    return report


# --------------------------------------------------------------------------------------------------- table

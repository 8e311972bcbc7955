"""Benchmark scripts that reach into predec's internals still run (tiny sizes; no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_norm_kernels_runs_every_row():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_norm_kernels.py"), "--rows", "8", "--width", "16", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| old") or line.startswith("| new")]
    assert len(rows) == 6, result.stdout


def test_profile_finetune_times_the_benchmark_step_three_ways():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "profile_finetune.py"), "--variants", "fpn_pt_enc", "--num-train", "8",
         "--steps", "2", "--warmup", "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| segmentation/fpn_pt_enc"))
    assert row.count("|") == 8 and "convolution" in result.stdout, result.stdout

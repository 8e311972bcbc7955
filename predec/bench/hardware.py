"""The machine a benchmark runs on: CPU flags, the precision predec trains with, the matmul peak (FLOP/s) and the
resident-memory probe."""

from __future__ import annotations

import contextlib
import gc
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on aarch64); empty if unknown."""
    with contextlib.suppress(OSError):
        match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            return set(match.group(1).split())
    return set()


def default_precision(device: str | torch.device = "cpu") -> str:
    """The precision predec trains with on ``device``: ``"bf16"`` (bf16-mixed) where the hardware computes in
    bf16, else ``"fp32"``.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: native bf16 units (AVX512-BF16 or AMX); without them oneDNN
    emulates bf16 and it is slower than fp32 (measured in ``docs/benchmarks.md``). Same rule as the trainer's
    ``precision: auto`` (:func:`predec.engine.trainer.default_precision`).
    """
    from predec.engine.trainer import default_precision as lightning_default

    accelerator = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return "bf16" if lightning_default(accelerator) == "bf16-mixed" else "fp32"


def bf16_runs(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast can run on ``device`` at all (natively or emulated by oneDNN on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(
    dtype: torch.dtype, device: str | torch.device = "cpu", size: int = 2048, min_time: float = 1.0, threads: int = 1
) -> float:
    """The best FLOP/s of ``size × size`` matmuls in ``dtype``: the peak that MFU is measured against.

    One untimed warm-up product, then products until ``min_time`` seconds have passed (at least 3); the fastest
    counts (2·size³ FLOPs each).

    Args:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        device: where to multiply.
        size: matrix side.
        min_time: seconds to keep multiplying.
        threads: CPU threads (``torch.set_num_threads``), as in the measurements.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    best = float("inf")
    with num_threads(threads), torch.inference_mode():
        torch.mm(a, b)
        synchronize(device)
        start = time.perf_counter()
        reps = 0
        while reps < 3 or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - t0)
            reps += 1
    return 2.0 * size**3 / best


def _proc_status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def resident_mb() -> float | None:
    """This process's resident memory now (MiB, ``VmRSS``); None where ``/proc`` has no such field."""
    rss = _proc_status_kb("VmRSS")
    return None if rss is None else rss / 1024


class MemoryProbe:
    """Peak memory over a span: CUDA allocator stats, or the Linux RSS high-water mark reset via clear_refs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda max_memory_allocated"
        self.setup_mb: float | None = None

    def start(self) -> None:
        """Begin the span: reset the peak and remember the current usage."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.setup_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux ≥ 4.0)
            self.method = "peak RSS (VmHWM) of the measured span"
        except OSError:
            self.method = "peak RSS (VmHWM) of the whole process (no clear_refs)"
        self.setup_mb = resident_mb()
        if self.setup_mb is None:
            self.method = "peak RSS (getrusage) of the whole process"

    def peak_mb(self) -> float | None:
        """Peak usage since :meth:`start` (MiB)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _proc_status_kb("VmHWM")
        if hwm is not None:
            return hwm / 1024
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024

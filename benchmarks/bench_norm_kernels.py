"""Milliseconds and page faults of the projector's per-chunk BatchNorm work, before and after it moved to BatchNorm's
own kernels (``predec.pretrain.heads``), on one chunk of the DeCon-ML projector (2048 rows × 4096, bf16).

Usage::

    python benchmarks/bench_norm_kernels.py [--rows 2048] [--width 4096] [--repeats 10] [--threads 2]

Each row times one operation on the same chunk (median of ``--repeats`` after one warm-up) and counts the minor page
faults per call, under glibc with its mmap threshold pinned (``predec.allocator.tune_glibc``, predec's fallback, where
every fresh allocation of 1 MiB or more is a fresh ``mmap``): a fault count of one chunk's pages means the operation
allocated a converted copy. "old" rows are the element-wise forms the projector used before (``torch.var_mean`` over
the rows of an fp32 copy; ``addcmul`` / ``sum`` mixing the bf16 chunk with fp32 statistics); "new" rows are what it
runs now.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch

from predec.allocator import tune_glibc
from predec.pretrain import heads


def measure(op: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median milliseconds and mean minor page faults per call of ``op``."""
    op()
    times, faults = [], 0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        op()
        times.append(time.perf_counter() - start)
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return statistics.median(times) * 1e3, faults / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pinned = tune_glibc()
    generator = torch.Generator().manual_seed(0)
    chunk = (torch.randn(args.rows, args.width, generator=generator) * 3 + 1).bfloat16()
    dy = torch.randn(args.rows, args.width, generator=generator).bfloat16()
    mean, var = chunk.float().mean(0), chunk.float().var(0, correction=0)
    norm = heads._Norm.of(torch.rand(args.width) + 0.5, torch.randn(args.width), mean, var, 1e-5)
    scale = norm.gamma * norm.invstd
    shift = norm.beta - mean * scale
    work = heads._Workspace(chunk.device)
    stat, normed = torch.empty(args.rows, args.width), torch.empty(args.rows, args.width)
    low = torch.empty_like(chunk)
    sums = torch.zeros(2, args.width)
    ops = {
        "old statistics: fp32 copy + var_mean over rows": lambda: torch.var_mean(stat.copy_(chunk), 0, correction=0),
        "new statistics: BatchNorm training kernel": lambda: heads._chunk_mean_var(work, chunk),
        "old normalise: mixed addcmul + bf16 copy": lambda: low.copy_(torch.addcmul(shift, chunk, scale, out=normed)),
        "new normalise: BatchNorm inference kernel": lambda: heads._normalise(work, chunk, norm),
        "old backward sums: mixed sum + mixed mul": lambda: (dy.sum(0, dtype=torch.float32), normed.mul_(dy).sum(0)),
        "new backward sums: BatchNorm backward kernel": lambda: heads._add_sums(sums, dy, chunk, norm),
    }
    print(f"# chunk {args.rows} x {args.width} bf16, {args.threads} threads, glibc mmap threshold pinned: {pinned}")
    print("| operation | ms | page faults per call |\n|---|--:|--:|")
    for name, op in ops.items():
        ms, faults = measure(op, args.repeats)
        print(f"| {name} | {ms:.2f} | {faults:,.0f} |", flush=True)


if __name__ == "__main__":
    main()

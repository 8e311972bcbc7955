"""Time and peak memory of the DeCon-ML decoder heads (the ≈87% of a DeCon-ML step's FLOPs) on this CPU.

Usage::

    python benchmarks/bench_slotcon_heads.py [--form lean|rows|conv] [--precision fp32|bf16] [--batch 8]
        [--size 224] [--levels 2 3 4 5] [--hidden 4096] [--steps 3] [--threads 2] [--json FILE]

One step = four :class:`predec.pretrain.SlotConHead` (256 -> 4096 -> 4096 -> 256 projectors, K = 256) on
P2..P5 of two views (student forward + backward, teacher forward, grouping, alignment, both losses), inputs
random channels-last maps standing in for the FPN outputs. Forms: ``lean`` the projector as shipped (rows +
recomputing backward), ``rows`` the same matmuls with plain autograd, ``conv`` the reference's NCHW
``Conv2d(k=1)`` + ``BatchNorm2d`` projector. Reports wall and process-CPU seconds per step (the first step is a
warm-up), peak RSS after each step (flat = no history kept across steps), the 1-minute load average and the
CPU's bf16 support. Run each form in its own process: the peak RSS is per process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch
from torch import nn

from predec.pretrain import SlotConHead


class ConvProjector(nn.Module):
    """The reference's DINOHead2d: 1x1 convolutions with BatchNorm2d, run on NCHW maps."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, 1),
            nn.BatchNorm2d(hidden_dim),
            nn.GELU(),
            nn.Conv2d(hidden_dim, hidden_dim, 1),
            nn.BatchNorm2d(hidden_dim),
            nn.GELU(),
            nn.Conv2d(hidden_dim, out_dim, 1),
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.mlp(maps.contiguous())


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16") if flag in flags]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--form", choices=("lean", "rows", "conv"), default="lean")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--prototypes", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    heads = nn.ModuleList()
    for _ in args.levels:
        head = SlotConHead(256, num_prototypes=args.prototypes, hidden_dim=args.hidden, save_memory=args.form == "lean")
        if args.form == "conv":
            head.projector = ConvProjector(256, args.hidden, 256)
            head.teacher_projector = ConvProjector(256, args.hidden, 256).requires_grad_(False)
        heads.append(head)
    heads.train()
    memory_format = torch.contiguous_format if args.form == "conv" else torch.channels_last
    boxes = [torch.tensor([[0.1, 0.0, 0.9, 0.8]] * args.batch), torch.tensor([[0.0, 0.2, 0.8, 1.0]] * args.batch)]
    flips = [torch.arange(args.batch) % 2 == 0, torch.arange(args.batch) % 3 == 0]
    flops_per_row = 2 * (256 * args.hidden + args.hidden * args.hidden + args.hidden * 256)
    rows = sum(args.batch * (args.size // 2**level) ** 2 for level in args.levels) * 2  # two views
    step_flops = rows * flops_per_row * 4  # student forward + backward (x3), teacher forward (x1)

    records = []
    for step in range(args.steps + 1):
        maps = [
            [
                torch.randn(args.batch, 256, args.size // 2**level, args.size // 2**level).to(
                    memory_format=memory_format
                )
                for _ in range(2)
            ]
            for level in args.levels
        ]
        student = [[m.clone().requires_grad_() for m in level] for level in maps]
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            outputs = [head(s, t, boxes, flips) for head, s, t in zip(heads, student, maps)]
        total = torch.stack([loss for loss, _ in outputs]).mean()
        queries = sum(terms["queries"] for _, terms in outputs)
        total.backward()
        heads.zero_grad(set_to_none=True)
        del outputs, total, student, maps
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        record = {"step": step, "wall_s": wall, "cpu_s": cpu, "peak_rss_gib": _peak_rss_gib(), "queries": queries}
        records.append(record)
        print(
            f"step {step}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {record['peak_rss_gib']:.2f} GiB, "
            f"{queries} contrastive queries",
            flush=True,
        )
    timed = records[1:] or records
    best = min(r["wall_s"] for r in timed)
    result = {
        "form": args.form,
        "precision": args.precision,
        "batch": args.batch,
        "size": args.size,
        "levels": args.levels,
        "hidden": args.hidden,
        "threads": args.threads,
        "step_tflop": step_flops / 1e12,
        "best_wall_s": best,
        "best_cpu_s": min(r["cpu_s"] for r in timed),
        "gflops_per_s": step_flops / best / 1e9,
        "steps": records,
        "load_avg_1min": os.getloadavg()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": _cpu_flags(),
        "torch": torch.__version__,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

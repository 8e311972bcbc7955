"""Seconds and peak memory per step of DeCon-ML pre-training (ResNet-50 + FPN) on this machine's CPU.

Usage::

    python benchmarks/bench_decon_step.py [--precision bf16|fp32] [--steps 4] [--batch 8] [--size 224]
        [--prototypes 256] [--hidden 4096] [--alpha 0.5] [--skip-dropout 0.5] [--no-channels-last]
        [--threads 2] [--count-flops] [--profile] [--trace-faults] [--no-caching-allocator] [--no-pin-mmap-threshold]
        [--json FILE]
        [--compare glibc,tcmalloc,jemalloc,mimalloc,glibc-dynamic,glibc-thp]

One step is exactly what ``predec pretrain`` runs per optimiser step with the ``decon_ml_coco_r50_fpn_800ep``
settings (α 0.5, FPN skip channel dropout 0.5, K = 256, projectors 256 → 4096 → 4096 → 256 on C5 and on each of
P2..P5): teacher EMA update, teacher forward of both views (no grad), then per view the student forward, the
five SlotCon heads and the backward of that view's part (``DeConModule.ssl_loss``), LARS step, scheduler step, on
``--batch`` random two-view batches of ``--size`` px with random overlap boxes and flips. Precision ``bf16`` is
Lightning's ``bf16-mixed`` on CPU (``torch.autocast("cpu", bfloat16)``); the model and inputs are channels-last
unless ``--no-channels-last``. The allocator is the one the ``predec`` command starts with (the script re-executes
itself under it, :mod:`predec.allocator`, ``PREDEC_ALLOCATOR``); ``--no-caching-allocator``: glibc's malloc with its
mmap threshold pinned to 1 MiB, predec's fallback where no caching allocator is installed;
``--no-pin-mmap-threshold``: glibc's default, under which the resident memory creeps up. ``--compare A,B,...``
runs the benchmark once per allocator, each in a fresh process under ``LD_PRELOAD`` as ``predec`` itself starts
(``glibc``: predec's fallback, pinned; ``glibc-dynamic``: glibc untouched; ``glibc-thp``: pinned, its mappings on
transparent huge pages), and prints one table with the speed-up over the first (the old/new ratio in one run:
``--compare glibc,tcmalloc``).

Reported per step: wall and process-CPU seconds (of which kernel: ``sys_s``, mostly page faults, counted in
``minor_faults``), the peak resident memory *during that step* (``VmHWM`` reset before each step through
``/proc/self/clear_refs``; flat across steps = nothing accumulates) and the resident memory after it. Step 0 is a
warm-up (allocator, oneDNN kernels) and is left out of the mean. ``--count-flops`` counts the FLOPs of step 0 with
``torch.utils.flop_counter``; ``--profile`` prints the operators of one extra step by CPU time; ``--trace-faults``
those of one extra step by the minor page faults made while each ran (a dispatch mode reading ``getrusage``
around every operator: where fresh memory is touched, e.g. under ``--no-caching-allocator``). The 1-minute load
average is printed before and after: run it alone (load < 3 on this 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from predec.allocator import ALLOCATOR_ENV, active_allocator, preload_env, reexec_with_allocator, tune_glibc
from predec.bench.hardware import MemoryProbe, cpu_flags, resident_mb
from predec.config import load_config
from predec.engine.trainer import cpu_has_bf16
from predec.pretrain.config import PretrainConfig
from predec.pretrain.decon import DeConModule


def _random_batch(batch: int, size: int, generator: torch.Generator, channels_last: bool) -> dict[str, torch.Tensor]:
    views = [torch.randn(batch, 3, size, size, generator=generator) for _ in range(2)]
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    out: dict[str, torch.Tensor] = {"view1": views[0], "view2": views[1]}
    for k in (1, 2):
        low = torch.rand(batch, 2, generator=generator) * 0.4
        high = 0.6 + torch.rand(batch, 2, generator=generator) * 0.4
        out[f"box{k}"] = torch.cat([low, high], dim=1)
        out[f"flip{k}"] = torch.rand(batch, generator=generator) < 0.5
    return out


def build(args: argparse.Namespace) -> DeConModule:
    """The DeCon-ML module of the paper recipe, with the benchmark's sizes."""
    overrides = [
        f"data.batch_size={args.batch}",
        f"data.view_size={args.size}",
        f"ssl.num_prototypes={args.prototypes}",
        f"ssl.hidden_dim={args.hidden}",
        f"ssl.encoder_loss_weight={args.alpha}",
        f"model.decoder_kwargs={{channels: 256, norm: BN, skip_dropout: {args.skip_dropout}}}",
        f"trainer.channels_last={str(args.channels_last).lower()}",
        "trainer.devices=1",
        "trainer.accelerator=cpu",
        f"trainer.max_steps={max(args.steps, 2)}",
        "schedule.warmup_steps=1",
    ]
    config = load_config("pretrain/decon_ml_coco_r50_fpn_800ep", overrides, schema=PretrainConfig)
    return DeConModule(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=4, help="timed steps after the warm-up step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--prototypes", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--skip-dropout", type=float, default=0.5)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--count-flops", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--trace-faults", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--compare", default=None, help="comma-separated allocators, one fresh process each")
    parser.add_argument(
        "--no-pin-mmap-threshold",
        dest="pin_mmap_threshold",
        action="store_false",
        help="glibc with its dynamic mmap threshold (implies --no-caching-allocator; predec pins it, tune_glibc)",
    )
    parser.add_argument(
        "--no-caching-allocator",
        dest="caching_allocator",
        action="store_false",
        help="run under glibc's malloc (pinned as predec's fallback) instead of the allocator predec starts with",
    )
    args = parser.parse_args()
    if args.caching_allocator and args.pin_mmap_threshold and not args.compare:
        reexec_with_allocator(sys.argv[1:], program=(__file__,))  # as the predec command starts (PREDEC_ALLOCATOR)
    if args.compare:
        compare(args.compare.split(","), [a for a in sys.argv[1:] if a not in ("--compare", args.compare)])
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    pinned = tune_glibc() if args.pin_mmap_threshold else False  # as run_pretraining does (no-op if not glibc)

    module = build(args).train()
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    generator = torch.Generator().manual_seed(0)
    total = args.steps + 1

    def step(index: int) -> tuple[float, dict]:
        batch = _random_batch(args.batch, args.size, generator, args.channels_last)
        module.update_teachers(index, total)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss, terms = module.ssl_loss(batch)  # back-propagates view 1's part itself, returns view 2's
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return float(terms["loss"]), terms

    records = []
    flops = None
    memory = MemoryProbe(torch.device("cpu"))  # VmHWM reset before each step
    for index in range(total):
        memory.start()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall, cpu = time.perf_counter(), time.process_time()
        if index == 0 and args.count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                loss, _ = step(index)
            flops = counter.get_total_flops()
        else:
            loss, _ = step(index)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        after = resource.getrusage(resource.RUSAGE_SELF)
        record = {
            "step": index,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "sys_s": round(after.ru_stime - usage.ru_stime, 2),
            "minor_faults": after.ru_minflt - usage.ru_minflt,
            "peak_rss_gib": round((memory.peak_mb() or 0.0) / 1024, 3),
            "rss_after_gib": round((resident_mb() or 0.0) / 1024, 3),
            "loss": round(loss, 4),
            "warmup": index == 0,
        }
        records.append(record)
        print(json.dumps(record), flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(total - 1)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if args.trace_faults:
        with FaultTrace() as trace:
            step(total - 1)
        trace.print(rows=15)

    timed = [r for r in records if not r["warmup"]]
    summary = {
        "what": "DeCon-ML R50-FPN step (decon_ml_coco_r50_fpn_800ep)",
        "precision": args.precision,
        "channels_last": args.channels_last,
        "batch": args.batch,
        "size": args.size,
        "prototypes": args.prototypes,
        "hidden": args.hidden,
        "alpha": args.alpha,
        "skip_dropout": args.skip_dropout,
        "levels": ["encoder", *module.levels] if module.alpha > 0 else list(module.levels),
        "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 1),
        "learnable_params_m": round(sum(p.numel() for _, p in module.learnable_params) / 1e6, 1),
        "mean_wall_s": round(sum(r["wall_s"] for r in timed) / max(len(timed), 1), 2),
        "peak_rss_gib_per_step": [r["peak_rss_gib"] for r in records],
        "max_peak_rss_gib": max(r["peak_rss_gib"] for r in records),
        "step0_tflop": None if flops is None else round(flops / 1e12, 3),
        "threads": args.threads,
        "allocator": active_allocator(),
        "mmap_threshold_pinned": pinned,
        "mean_sys_s": round(sum(r["sys_s"] for r in timed) / max(len(timed), 1), 2),
        "kernel_share": round(sum(r["sys_s"] for r in timed) / max(sum(r["wall_s"] for r in timed), 1e-9), 3),
        "mean_minor_faults": round(sum(r["minor_faults"] for r in timed) / max(len(timed), 1)),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": sorted(cpu_flags() & {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "cpu_has_bf16": cpu_has_bf16(),
        "torch": torch.__version__,
        "steps": records,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


class FaultTrace(TorchDispatchMode):
    """Minor page faults, calls and seconds per operator, read from ``getrusage`` around each one."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        out = func(*args, **(kwargs or {}))
        entry = self.stats[str(func)]
        entry[0] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        entry[1] += 1
        entry[2] += time.perf_counter() - start
        return out

    def print(self, rows: int) -> None:
        """The ``rows`` operators with the most faults, as a markdown table."""
        total = sum(entry[0] for entry in self.stats.values())
        print(f"\n{total:,} minor faults in one step\n| operator | faults | calls | s |\n|---|--:|--:|--:|")
        for name, (faults, calls, seconds) in sorted(self.stats.items(), key=lambda item: -item[1][0])[:rows]:
            print(f"| {name} | {faults:,} | {calls} | {seconds:.2f} |")


def compare(allocators: list[str], argv: list[str]) -> None:
    """Run this benchmark once per allocator in a fresh process (as ``predec`` starts itself) and print a table."""
    rows = []
    for name in allocators:
        pin = name != "glibc-dynamic"
        env = {**os.environ, ALLOCATOR_ENV: "glibc" if name.startswith("glibc") else name}
        if name == "glibc-thp":  # pinned, and malloc's mappings on transparent huge pages (glibc >= 2.35)
            env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
        env = preload_env(env) or env
        if not name.startswith("glibc") and "LD_PRELOAD" not in env:
            print(f"{name}: not installed here, skipped", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, __file__, *argv, "--json", str(out), *([] if pin else ["--no-pin-mmap-threshold"])]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, env=env, check=True)
            rows.append({"name": name, **json.loads(out.read_text())})
    if not rows:
        return
    base = rows[0]["mean_wall_s"]
    print(
        "\n| allocator | step s | kernel s | kernel share | minor faults/step | peak GiB per step | "
        f"x vs {rows[0]['name']} |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        peaks = ", ".join(f"{p:.2f}" for p in row["peak_rss_gib_per_step"])
        print(
            f"| {row['name']} ({row['allocator']}) | {row['mean_wall_s']:.1f} | {row['mean_sys_s']:.1f} | "
            f"{row['kernel_share']:.1%} | {row['mean_minor_faults']:,} | {peaks} | {base / row['mean_wall_s']:.2f} |"
        )


if __name__ == "__main__":
    main()

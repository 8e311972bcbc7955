"""Measure throughput, peak memory, FLOPs and MFU of dense models (markdown table + JSON).

  predec bench [--models SPEC ...] [--size H W] [--batch B] [--task segmentation|depth]
               [--precision fp32 bf16] [--channels-last on|off|both] [--modes train infer compile onnx]
               [--steps N] [--warmup W] [--repeats R] [--threads T] [--device cpu|cuda|auto] [--json FILE]

SPEC is arch:encoder[:decoder]: xnet:resnet18:convnext_atto (×Net, decoder = a timm classification backbone),
fpn:resnet18, unet:resnet18, deeplabv3plus:resnet18, fcn:resnet18, or timm:resnet50 (a plain timm classifier, as a
reference). Weights are random: speed does not depend on them, and nothing is downloaded.

Modes: train (forward + loss + backward + AdamW step), infer (eager, inference_mode), compile (torch.compile, mode
default; compile time in "setup s"), onnx (fp32 export run by ONNX Runtime; export + session time in "setup s").
Precision bf16 = bf16-mixed (autocast). The table's header gives the matmul peak measured in the same run, against
which MFU is computed, and the precision predec trains with by default on this device. Each configuration (model ×
precision × memory format) runs in a fresh process; "peak MB" is its resident-set high-water mark over a mode's
measured steps (CUDA: max allocated), "Δ MB" what those steps added. --repeats R interleaves R rounds and keeps each
measurement's fastest. Definitions: docs/benchmarks.md.

Default: the four DEFAULT_MODELS (two ×Net encoder×decoder pairs, FPN, U-Net) at 128×128, batch 2, modes train,
infer and onnx, fp32 and bf16 (where bf16 runs), channels_last on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHANNELS_LAST_CHOICES: dict[str, tuple[bool, ...]] = {"on": (True,), "off": (False,), "both": (False, True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``."""
    from predec.bench.spec import DEFAULT_MODELS, MODES, PRECISIONS, TASKS

    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        metavar="SPEC",
        help=f"arch:encoder[:decoder] specs (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"), help="input size")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    parser.add_argument("--task", choices=TASKS, default="segmentation", help="head and loss (default segmentation)")
    parser.add_argument("--num-classes", type=int, default=21, help="segmentation classes (default 21)")
    parser.add_argument(
        "--precision", nargs="+", choices=PRECISIONS, help="fp32 and/or bf16 (default: both where bf16 runs)"
    )
    parser.add_argument(
        "--channels-last", choices=CHANNELS_LAST_CHOICES, default="on", help="memory format (default on)"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=["train", "infer", "onnx"], help="default: train infer onnx"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all measurements, fastest counts (default 1)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's default, the physical cores)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default: cuda if available)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--matmul-size", type=int, help="side of the peak matmul (default 2048 CPU, 8192 CUDA)")
    parser.add_argument(
        "--matmul-seconds", type=float, default=2.0, help="seconds per dtype of each peak measurement (default 2)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement (default 1800)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON."""
    from predec.bench.runs import run_bench
    from predec.bench.spec import parse_model_spec
    from predec.bench.table import format_table

    try:
        for spec in args.models:
            parse_model_spec(spec)
    except ValueError as err:
        print(f"predec bench: {err}", file=sys.stderr)
        return 2
    for name in ("batch", "steps", "repeats"):
        if getattr(args, name) < 1:
            print(f"predec bench: --{name} must be ≥ 1, got {getattr(args, name)}.", file=sys.stderr)
            return 2
    if args.warmup < 0:
        print(f"predec bench: --warmup must be ≥ 0, got {args.warmup}.", file=sys.stderr)
        return 2
    try:
        report = run_bench(
            args.models,
            modes=args.modes,
            precisions=args.precision,
            channels_last=CHANNELS_LAST_CHOICES[args.channels_last],
            height=args.size[0],
            width=args.size[1],
            batch=args.batch,
            task=args.task,
            num_classes=args.num_classes,
            steps=args.steps,
            warmup=args.warmup,
            threads=args.threads,
            repeats=args.repeats,
            device=args.device,
            compile_backend=args.compile_backend,
            matmul_size=args.matmul_size,
            matmul_seconds=args.matmul_seconds,
            timeout=args.timeout,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except ValueError as err:
        print(f"predec bench: {err}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json())
        print(f"\nResults written to {args.json}", file=sys.stderr)
    failed = [r for r in report.results if r["status"] != "ok"]
    return 1 if failed else 0

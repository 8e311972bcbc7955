"""predec against segmentation_models_pytorch: one training step of the same architecture, side by side.

Usage::

    pip install -e ".[bench]"        # segmentation-models-pytorch: a benchmark extra, not a predec dependency
    python benchmarks/bench_vs_smp.py [--archs fpn unet xnet] [--encoder resnet18] [--batch 8] [--size 128]
        [--precision fp32 bf16] [--steps 10] [--threads 2] [--step own|same] [--channels-last]
        [--xnet-reshape MODE] [--count-flops] [--profile ARCH] [--json FILE]

``--step own`` (default): each library's training step as its users run it. predec: what ``predec train`` runs,
its optimiser builder (``predec.optim.build_optimizer``: AdamW, torch's fused kernel, no decay on norms and biases),
its ``cross_entropy_loss`` and channels_last (``trainer.channels_last: true``, as its recipes set; the library
default is off); smp: the loop of its examples, ``torch.optim.AdamW(model.parameters())`` (torch's default
implementation) and ``F.cross_entropy`` in PyTorch's default memory format. ``--step same``: one identical step for
both, so that only the models differ: ``torch.optim.AdamW(..., foreach=True)``, ``F.cross_entropy``, the memory
format of ``--channels-last``. Both: lr 1e-4, weight decay 1e-2, ignore index 255, float32 logits,
``zero_grad(set_to_none=True)``, the same random batch, train mode; bf16 = ``torch.autocast("cpu", bfloat16)`` as
Lightning's ``bf16-mixed``. predec's models come from ``predec.create_model(arch, encoder=...)``, smp's from
``smp.FPN`` / ``smp.Unet`` with ``encoder_weights=None`` and its defaults.

All models run in this process, interleaved: round r times every model once, so drift of the machine's speed hits
all alike; the median of ``--steps`` rounds after 3 warm-up rounds is reported with the ratio smp / predec (> 1:
predec is faster). ``xnet`` (predec's ×Net, the encoder also as its decoder backbone) has no smp counterpart: its row
gives its step time over predec's FPN instead. ``--count-flops`` adds each model's FLOPs per training image
(``FlopCounterMode`` over one step: forward + backward, a multiply-add = 2). ``--profile ARCH`` prints the operators
of two of predec's steps by self CPU time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import predec
from predec.engine.trainer import cpu_has_bf16, cpu_name

CLASSES = 21
ARCHS = ("fpn", "unet", "xnet")
SMP_ARCHS = ("fpn", "unet")


def smp_model(arch: str, encoder: str) -> nn.Module:
    import segmentation_models_pytorch as smp

    build = {"fpn": smp.FPN, "unet": smp.Unet}[arch]
    return build(encoder_name=encoder, encoder_weights=None, classes=CLASSES)


def predec_model(arch: str, encoder: str, xnet_reshape: str | None = None) -> nn.Module:
    options = {}
    if arch == "xnet":
        options = {"decoder": encoder, **({"reshape": xnet_reshape} if xnet_reshape else {})}
    return predec.create_model(arch, encoder=encoder, task="segmentation", num_classes=CLASSES, **options)


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    bf16: bool,
    library: str,
    step: str,
    channels_last: bool,
) -> Callable[[], None]:
    """One training step of ``model`` on this batch, as a closure (``step``: ``own`` or ``same``, see above)."""
    if step == "own":
        channels_last = library == "predec"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model, images = model.to(memory_format=memory_format), images.contiguous(memory_format=memory_format)
    if step == "own" and library == "predec":
        from predec.config import OptimConfig
        from predec.optim import build_optimizer
        from predec.tasks.segmentation import cross_entropy_loss

        optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=1e-4, weight_decay=1e-2))
        loss_fn = functools.partial(cross_entropy_loss, ignore_index=255)
    else:
        implementation = {"foreach": True} if step == "same" else {}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2, **implementation)
        loss_fn = functools.partial(F.cross_entropy, ignore_index=255)
    model.train()

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def flops_per_image(step: Callable[[], None], batch: int) -> float:
    """GFLOPs of one training step per image (``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["fpn", "unet"], choices=ARCHS)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--xnet-reshape", default=None, help="×Net's Re-Shape mode (default: the library's)")
    parser.add_argument("--step", default="own", choices=["own", "same"], help="each library's step, or one for both")
    parser.add_argument("--channels-last", action="store_true", help="--step same: channels_last for both")
    parser.add_argument("--count-flops", action="store_true", help="add each model's GFLOPs per training image")
    parser.add_argument("--profile", default=None, choices=ARCHS, help="print the operators of predec's ARCH step")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.channels_last and args.step == "own":
        parser.error("--channels-last sets the memory format of --step same; --step own uses each library's own")
    torch.set_num_threads(args.threads)
    precisions = args.precision or (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    labels = torch.randint(0, CLASSES, (args.batch, args.size, args.size), generator=generator)
    print(
        f"# {cpu_name()}, {args.threads} threads, bf16 units: {cpu_has_bf16()}, torch {torch.__version__}, "
        f"batch {args.batch}, {args.size}², step {args.step}"
        + (f" ({'channels_last' if args.channels_last else 'NCHW'})" if args.step == "same" else "")
        + ", "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    for precision in precisions:
        steps: dict[str, Callable[[], None]] = {}
        for arch in args.archs:
            for library in ("predec", "smp") if arch in SMP_ARCHS else ("predec",):
                torch.manual_seed(0)
                model = (
                    predec_model(arch, args.encoder, args.xnet_reshape)
                    if library == "predec"
                    else smp_model(arch, args.encoder)
                )
                bf16 = precision == "bf16"
                steps[f"{library} {arch}"] = train_step(
                    model, images, labels, bf16, library, args.step, args.channels_last
                )
        flops = {name: flops_per_image(step, args.batch) for name, step in steps.items()} if args.count_flops else {}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for round_index in range(args.steps + 3):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                if round_index >= 3:
                    times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        for arch in args.archs:
            ours = medians[f"predec {arch}"]
            row = {"arch": arch, "precision": precision, "predec_ms": round(ours, 1)}
            if arch in SMP_ARCHS:
                row["smp_ms"] = round(medians[f"smp {arch}"], 1)
                row["smp_over_predec"] = round(medians[f"smp {arch}"] / ours, 3)
            if arch == "xnet" and "predec fpn" in medians:
                row["over_predec_fpn"] = round(ours / medians["predec fpn"], 3)
            for library in ("predec", "smp"):
                if f"{library} {arch}" in flops:
                    row[f"{library}_gflops_per_image"] = round(flops[f"{library} {arch}"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(2):
                    steps[f"predec {args.profile}"]()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print("\n| arch | precision | predec ms/step | smp ms/step | smp / predec | ×Net / predec FPN |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [row.get(key, "—") for key in ("predec_ms", "smp_ms", "smp_over_predec", "over_predec_fpn")]
        print(f"| {row['arch']} | {row['precision']} | " + " | ".join(map(str, cells)) + " |")
    if args.json:
        machine = {
            "cpu": cpu_name(),
            "machine": platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        }
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()

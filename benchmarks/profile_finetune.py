"""Where a fine-tuning step goes: the benchmark's fine-tuning stage, timed through Lightning and as a bare loop.

Usage (docs/benchmarks.md, "Where a fine-tuning step goes")::

    python benchmarks/profile_finetune.py --threads 1                         # FPN, ×Net, U-Net; segmentation
    python benchmarks/profile_finetune.py --variants fpn_pt_enc --tasks depth --precision bf16-mixed
    python benchmarks/profile_finetune.py --repeats 3 --json old.json         # run it on two checkouts to compare

Each variant's recipe is the one ``predec demo --benchmark`` trains (``configs/demo/benchmark.yaml``: 96², batch 8,
AdamW, plateau schedule, fp32 unless ``--precision``), with random weights (timing does not depend on them, and
nothing is downloaded). Per variant and repeat:

- **lightning**: ``predec.engine.dense_runs.train_dense`` (the run engine the demo uses) for ``--warmup`` +
  ``--steps`` steps with one validation at the end; the step time is the interval between consecutive
  ``on_train_batch_start`` calls (data, forward, loss, backward, optimiser, guards, logging, hooks), the
  validation time that of ``on_validation_epoch_start`` to ``..._end``;
- **bare**: the same module, optimiser, schedule and data loader in a plain PyTorch loop;
- **bare, cached batches**: the same loop on batches collated in advance (no data loading);
- **profile**: ``torch.profiler`` over the cached-batch loop: self CPU time by operator family;
- with ``--compile``: the cached-batch loop on ``torch.compile(model)`` (inductor), compilation untimed.

Prints a markdown table (min / median / max over repeats of each repeat's median step) and the operator split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

import predec

DEFAULT_VARIANTS = ("fpn_pt_enc", "xnet_pt_dec", "unet_pt_enc")
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution", ("conv",)),
    ("batch norm", ("batch_norm",)),
    ("optimiser", ("adam", "_foreach", "lerp", "addcdiv")),
    ("interpolation", ("upsample", "interpolate")),
    ("loss", ("nll", "log_softmax", "cross_entropy", "log", "silog")),
)


def stage_config(
    variant: str, task: str, num_train: int, steps: int, precision: str, run_dir: Path, extra: tuple[str, ...] = ()
) -> Any:
    """The benchmark's recipe of ``variant`` (first seed) with random weights, ``steps`` steps, one validation and
    the ``extra`` overrides."""
    from predec.config import load_config
    from predec.demo.settings import finetune_stage_name, load_demo_config
    from predec.demo.stages import finetune_config, plan

    demo = load_demo_config(
        "benchmark",
        [
            f"finetune.variants=[{variant}]",
            f"finetune.tasks=[{task}]",
            f"finetune.num_train=[{num_train}]",
            "finetune.extra_num_train={}",
            f"finetune.max_steps={steps}",
        ],
    )
    name = finetune_stage_name(task, variant, num_train, demo.finetune.seeds_of(variant)[0])
    spec = next(stage.spec for stage in plan(demo) if stage.name == name)
    config = finetune_config(spec, {"encoder": None, "decoder": None}, run_dir, False)
    overrides = [
        f"trainer.max_steps={steps}",
        f"trainer.val_every_n_steps={steps}",
        "trainer.patience=null",
        f"trainer.precision={precision}",
        f"trainer.checkpoint_every_n_steps={steps}",
        "schedule.warmup_steps=1",
        *extra,
    ]
    from predec.config import DenseConfig, to_dict

    return load_config(to_dict(config), overrides, schema=DenseConfig)


class StepClock(L.Callback):
    """Records the start of every training batch and each validation's duration."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.validations: list[float] = []
        self._val_start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_validation_epoch_start(self, *args: Any) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, *args: Any) -> None:
        self.validations.append(time.perf_counter() - self._val_start)


def time_lightning(config: Any, warmup: int, run_dir: Path) -> dict[str, Any]:
    """Median step and validation seconds of ``train_dense`` (steps after ``warmup``)."""
    from predec.engine.dense_runs import train_dense

    clock = StepClock()
    train_dense(config, run_dir, overwrite=True, callbacks=[clock])
    periods = [b - a for a, b in zip(clock.starts, clock.starts[1:])][warmup:]
    return {"step": statistics.median(periods), "validation": clock.validations[0] if clock.validations else None}


def render_scenes(config: Any) -> None:
    """Render the run's training and validation scenes into SynthScenes' in-process cache, which every loader of
    these settings shares: a run renders each scene once, so a few timed steps must not pay for rendering."""
    from predec.engine.datamodule import DenseDataModule

    data = DenseDataModule(config.data, config.model.task, config.seed, config.trainer.max_steps, 1)
    data.setup("fit")
    for dataset in (data.train_set, data.val_set):
        for index in range(len(dataset)):
            dataset.raw(index)


def bare_parts(config: Any, compile_model: bool = False) -> tuple[Any, Any, Any, Any]:
    """Module, optimiser, scheduler and training loader of ``config`` as the run engine builds them
    (``compile_model``: the model wrapped in ``torch.compile``, inductor)."""
    from predec.engine.datamodule import DenseDataModule
    from predec.engine.dense import DenseModule

    L.seed_everything(config.seed, verbose=False)
    module = DenseModule(config)
    module.train()
    optimizers = module.configure_optimizers()
    if compile_model:
        module.model = torch.compile(module.model)
    data = DenseDataModule(config.data, config.model.task, config.seed, config.trainer.max_steps, 1)
    data.setup("fit")
    return module, optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"], data.train_dataloader()


def bare_step(module: Any, optimizer: Any, scheduler: Any, batch: dict[str, Any], autocast: bool) -> None:
    """One training step without Lightning: forward, loss, backward, optimiser and scheduler steps."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outputs = module(batch["image"])
        loss, _ = module.loss(outputs.float(), batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def time_bare(config: Any, warmup: int, steps: int, cached: bool, compile_model: bool = False) -> float:
    """Median seconds of a bare step (``cached``: on batches collated in advance; ``compile_model``: the model
    compiled, its compilation in the first, untimed steps)."""
    module, optimizer, scheduler, loader = bare_parts(config, compile_model)
    autocast = config.trainer.precision == "bf16-mixed"
    batches = iter(list(loader)[: warmup + steps] if cached else loader)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        bare_step(module, optimizer, scheduler, next(batches), autocast)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def operator_split(config: Any, steps: int) -> dict[str, float]:
    """Share of self CPU time per operator family over ``steps`` cached-batch bare steps (after up to 3 warm-up
    steps)."""
    from torch.profiler import ProfilerActivity, profile

    module, optimizer, scheduler, loader = bare_parts(config)
    autocast = config.trainer.precision == "bf16-mixed"
    batches = list(loader)  # the run's batches: warm-up and timed steps
    warm = min(3, len(batches) - 1)
    for batch in batches[:warm]:
        bare_step(module, optimizer, scheduler, batch, autocast)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[warm : warm + steps]:
            bare_step(module, optimizer, scheduler, batch, autocast)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        family = next((f for f, words in FAMILIES if any(w in name for w in words)), "other")
        totals[family] = totals.get(family, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        **{family: value / whole for family, value in sorted(totals.items(), key=lambda kv: -kv[1])},
        "top": [(e.key, round(e.self_cpu_time_total / whole, 4)) for e in top],
    }


def spread(values: list[float]) -> str:
    """``min / median / max`` in milliseconds."""
    ms = [1000 * v for v in values]
    return f"{min(ms):.0f} / {statistics.median(ms):.0f} / {max(ms):.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--tasks", nargs="+", default=["segmentation"], choices=["segmentation", "depth"])
    parser.add_argument("--num-train", type=int, default=128, help="labelled scenes (the loader's cache)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="rounds, interleaved over the modes")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a demo worker uses 1)")
    parser.add_argument("--override", nargs="*", default=[], help="extra recipe overrides (key=value)")
    parser.add_argument("--compile", action="store_true", help="also time the cached-batch loop on torch.compile")
    parser.add_argument("--no-profile", action="store_true", help="skip the operator split")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from predec.engine.trainer import cpu_name

    total = args.warmup + args.steps
    results: dict[str, Any] = {
        "cpu": cpu_name(), "threads": args.threads, "precision": args.precision, "torch": torch.__version__,
        "steps": args.steps, "warmup": args.warmup, "overrides": args.override, "repeats": args.repeats,
        "predec": str(Path(predec.__file__).parent),
        "rows": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for variant in args.variants:
                config = stage_config(
                    variant, task, args.num_train, total, args.precision, Path(tmp) / "run", tuple(args.override)
                )
                render_scenes(config)
                row: dict[str, list[float]] = {"lightning": [], "bare": [], "bare_cached": [], "validation": []}
                if args.compile:
                    row["bare_cached_compiled"] = []
                for _ in range(args.repeats):
                    timed = time_lightning(config, args.warmup, Path(tmp) / "run")
                    row["lightning"].append(timed["step"])
                    row["validation"].append(timed["validation"])
                    row["bare"].append(time_bare(config, args.warmup, args.steps, cached=False))
                    row["bare_cached"].append(time_bare(config, args.warmup, args.steps, cached=True))
                    if args.compile:
                        started = time.perf_counter()
                        timed_step = time_bare(config, args.warmup, args.steps, cached=True, compile_model=True)
                        row["bare_cached_compiled"].append(timed_step)
                        row.setdefault("compile_run_seconds", []).append(time.perf_counter() - started)
                if not args.no_profile:
                    row["operators"] = operator_split(config, min(args.steps, 10))  # type: ignore[assignment]
                results["rows"][f"{task}/{variant}"] = row
                print(json.dumps({f"{task}/{variant}": row}), file=sys.stderr, flush=True)
    print(f"{results['cpu']}, {args.threads} thread(s), {args.precision}, torch {torch.__version__}; "
          f"batch 8 at 96², median of {args.steps} steps after {args.warmup}, min / median / max over "
          f"{args.repeats} repeats (ms)\n")  # fmt: skip
    print("| task / variant | Lightning step | bare step | bare step, cached batches | Lightning overhead | "
          "data | validation (100 scenes) |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|")
    for key, row in results["rows"].items():
        light, bare, cached = (statistics.median(row[k]) for k in ("lightning", "bare", "bare_cached"))
        print(f"| {key} | {spread(row['lightning'])} | {spread(row['bare'])} | {spread(row['bare_cached'])} | "
              f"{1000 * (light - bare):.0f} ms ({(light - bare) / light:.0%}) | {1000 * (bare - cached):.0f} ms "
              f"({(bare - cached) / light:.0%}) | {spread(row['validation'])} |")  # fmt: skip
    if args.compile:
        print("\ntorch.compile (inductor) of the model, bare loop on cached batches (ms; whole measurement, "
              "compilation included, in s):\n")  # fmt: skip
        for key, row in results["rows"].items():
            print(f"- {key}: eager {spread(row['bare_cached'])}, compiled {spread(row['bare_cached_compiled'])}; "
                  f"{min(row['compile_run_seconds']):.0f} s")  # fmt: skip
    if not args.no_profile:
        print("\nSelf CPU time of the cached-batch bare step by operator family:\n")
        for key, row in results["rows"].items():
            ops = row["operators"]
            split = ", ".join(f"{k} {v:.0%}" for k, v in ops.items() if k != "top")
            print(f"- {key}: {split}; top operators {ops['top']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

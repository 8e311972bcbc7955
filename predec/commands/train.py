"""Fine-tune a dense model (depth or segmentation) from a YAML recipe.

  predec train --config RECIPE [--run-dir DIR] [--resume [CKPT]] [--overwrite] [key.subkey=value ...]

RECIPE is a YAML file or a shipped recipe name (e.g. dense/synth_depth_xnet; list them with --list). Overrides such as
optim.lr=1e-4 trainer.max_steps=200 model.encoder_weights=pretrained are parsed as YAML. The run directory
(default: <output_dir>/<name>) receives config.yaml, checkpoints/last.ckpt, logs/ (TensorBoard + CSV),
metrics.json and model/ (save_pretrained). An interrupted run directory is resumed automatically.
"""

from __future__ import annotations

import argparse
import json
import sys

from predec.commands import add_run_arguments, start_run
from predec.config import list_recipes, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options to ``parser``."""
    add_run_arguments(parser, "dense recipes (dense/...)")
    parser.add_argument("overrides", nargs="*", metavar="key.subkey=value", help="config overrides (YAML values)")


def run(args: argparse.Namespace) -> int:
    """Train; print the run directory and final metrics. Exit codes: 0 done, 1 stopped on NaN/Inf, 2 bad input."""
    if args.list:
        print("\n".join(name for name in list_recipes() if name.startswith("dense/")))
        return 0
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from predec.engine.dense_runs import train_dense

    if not args.config:
        print("predec train: error: --config RECIPE is required (see --list for the shipped recipes)", file=sys.stderr)
        return 2
    result = start_run(
        "train",
        lambda: train_dense(
            load_config(args.config, args.overrides), args.run_dir, resume=args.resume, overwrite=args.overwrite
        ),
    )
    if isinstance(result, int):
        return result
    if rank_zero_only.rank != 0:  # under DDP every process runs this command; one reports
        return 0
    scalars = {k: v for k, v in result.metrics["metrics"].items() if isinstance(v, (int, float))}
    print(f"Run directory: {result.run_dir.root} (step {result.step})")
    print(json.dumps(scalars, indent=2))
    return 0

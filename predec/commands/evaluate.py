"""Evaluate a dense checkpoint on the evaluation split of a recipe and write metrics.json.

  predec eval --checkpoint CKPT [--config RECIPE] [--out DIR] [key.subkey=value ...]

CKPT: a predec train checkpoint (.ckpt, which records its recipe, so --config may be left out), a save_pretrained
directory or .safetensors file (then --config is needed for data and evaluation settings). The model settings of
the recipe must match the checkpoint's (architecture, backbones, task, classes): a mismatch is an error naming them.
Overrides change data/eval/trainer settings, e.g. eval.flip=true trainer.devices=2 trainer.strategy=ddp.
Writes DIR/config.yaml and DIR/metrics.json (default DIR: <run>/eval beside a run's checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from predec.commands import error_message
from predec.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.ckpt), save_pretrained dir or .safetensors")
    parser.add_argument("--config", help="recipe (YAML file or shipped name); default: the checkpoint's own")
    parser.add_argument("--out", type=Path, help="output directory for config.yaml and metrics.json")
    parser.add_argument("overrides", nargs="*", metavar="key.subkey=value", help="config overrides (YAML values)")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the scalar metrics. Exit code 2 on bad input."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from predec.data.io import DataError
    from predec.engine.dense_checkpoint import load_dense_checkpoint
    from predec.engine.dense_runs import evaluate_dense, resolve_eval_config

    try:
        checkpoint = load_dense_checkpoint(args.checkpoint)
        config = load_config(args.config, args.overrides) if args.config else None
        config = resolve_eval_config(checkpoint, config, args.overrides)
        record = evaluate_dense(config, checkpoint, args.out)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
        print(f"predec eval: error: {error_message(err)}", file=sys.stderr)
        return 2
    if rank_zero_only.rank != 0:  # under DDP every process runs this command; one reports
        return 0
    scalars = {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))}
    print(json.dumps(scalars, indent=2))
    print(f"Wrote {record['metrics_file']}")
    return 0

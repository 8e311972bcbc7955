"""Pre-train an encoder (and decoder): supervised classification, SlotCon, DeCon-SL or DeCon-ML.

  predec pretrain --config RECIPE [--run-dir DIR] [--resume [CKPT]] [--overwrite] [key.subkey=value ...]
  predec pretrain --export {timm,detectron2,mmseg} --checkpoint CKPT --out FILE [--student]

RECIPE is a YAML file or a shipped recipe name (pretrain/synth_decon_ml; list them with --list); its `method` is
supervised, slotcon, decon-sl or decon-ml. Overrides such as trainer.max_steps=200 ssl.encoder_loss_weight=0 are
parsed as YAML. The run directory (default: <output_dir>/<name>) receives config.yaml, checkpoints/last.ckpt,
logs/, metrics.json and the weights: weights.safetensors (SSL: student/teacher encoder and decoder) or
classifier.safetensors (supervised, timm keys). An interrupted run directory is resumed automatically.

Use a pre-training checkpoint (last.ckpt or weights.safetensors) as model.encoder_weights / model.decoder_weights
of a `predec train` recipe (teacher weights; append #student for the student). --export converts it for other
toolboxes: timm (encoder, .safetensors), detectron2 (ResNet + FPN as Mask R-CNN's backbone.*, .pth) or mmseg
(ResNet + FCN head as backbone.* / decode_head.*, .pth).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from predec.commands import add_run_arguments, error_message, start_run
from predec.config import list_recipes, load_config

EXPORT_FORMATS = ("timm", "detectron2", "mmseg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pretrain`` options to ``parser``."""
    add_run_arguments(parser, "pre-training recipes")
    parser.add_argument("--export", choices=EXPORT_FORMATS, help="convert --checkpoint to this layout instead")
    parser.add_argument("--checkpoint", type=Path, help="--export: a pre-training last.ckpt or weights.safetensors")
    parser.add_argument("--out", type=Path, help="--export: output file")
    parser.add_argument("--student", action="store_true", help="--export: the student's weights (default: teacher)")
    parser.add_argument("overrides", nargs="*", metavar="key.subkey=value", help="config overrides (YAML values)")


def _export(args: argparse.Namespace) -> int:
    from predec.pretrain.transfer import export_checkpoint

    if args.checkpoint is None or args.out is None:
        print("predec pretrain: error: --export needs --checkpoint CKPT and --out FILE", file=sys.stderr)
        return 2
    try:
        path = export_checkpoint(
            args.checkpoint, args.out, args.export, source="student" if args.student else "teacher"
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"predec pretrain: error: {error_message(err)}", file=sys.stderr)
        return 2
    print(f"Wrote {path} ({args.export} layout, {'student' if args.student else 'teacher'} weights)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Pre-train or export; exit codes: 0 done, 1 stopped on NaN/Inf, 2 bad input."""
    if args.list:
        print("\n".join(name for name in list_recipes() if name.startswith(("pretrain/", "zoo/"))))
        return 0
    if args.export:
        return _export(args)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from predec.pretrain.config import PretrainConfig
    from predec.pretrain.runs import run_pretraining

    if not args.config:
        print("predec pretrain: error: --config RECIPE is required (see --list), or --export", file=sys.stderr)
        return 2
    result = start_run(
        "pretrain",
        lambda: run_pretraining(
            load_config(args.config, args.overrides, schema=PretrainConfig),
            args.run_dir,
            resume=args.resume,
            overwrite=args.overwrite,
        ),
    )
    if isinstance(result, int):
        return result
    if rank_zero_only.rank == 0:  # under DDP every process returns here; one report is enough
        shown = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) or v is None}
        print(f"Run directory: {result.run_dir.root} (step {result.step})")
        print(json.dumps(shown, indent=2))
    return 0

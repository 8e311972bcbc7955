"""Run the embedded demo: pre-train, fine-tune and compare dense models on generated data (no download).

  predec demo [--quick] [--out DIR] [--config FILE] [key.subkey=value ...]

Generates SynthObjects / SynthScenes, pre-trains the backbones (classification) and the SSL methods (SlotCon,
DeCon-SL, DeCon-ML), fine-tunes every variant (×Net with pre-trained / random decoder, FPN, U-Net, FPN from DeCon /
SlotCon / scratch) for segmentation and depth over several seeds, and writes report.md, results.json and PNG figures
into DIR (default runs/demo). Finished stages are reused on the next run (say so), failed stages are reported while
the others run, and an interrupted run resumes. Settings: predec/configs/demo/{quick,full}.yaml, or --config FILE;
overrides such as finetune.seeds=[0,1] workers=1 are parsed as YAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from predec.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument("--quick", action="store_true", help="the small settings (quick.yaml): a few minutes")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)")
    parser.add_argument("--config", help="demo settings YAML (default: full.yaml, or quick.yaml with --quick)")
    parser.add_argument("overrides", nargs="*", metavar="key.subkey=value", help="settings overrides (YAML values)")


def run(args: argparse.Namespace) -> int:
    """Run the demo. Exit codes: 0 every stage finished, 1 some stage failed (see the report), 2 bad settings,
    130 interrupted."""
    from predec.demo import run_demo

    source = args.config or ("quick" if args.quick else "full")
    try:
        results = run_demo(source, args.out, args.overrides, echo=lambda line: print(line, flush=True))
    except ConfigError as err:
        print(f"predec demo: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    failed = [n for n, r in results["stages"].items() if r["state"] not in ("done", "cached")]
    if failed:
        print(f"{len(failed)} stage(s) did not finish: see {args.out / 'report.md'} (section 'Failed stages').")
        return 1
    return 0

"""Run the embedded demo: fine-tune and compare dense models on generated data, from predec's model zoo.

  predec demo [--quick | --benchmark] [--from-scratch] [--out DIR] [--config FILE] [key.subkey=value ...]

Loads the pre-trained weights of the zoo (a SynthObjects classifier; SlotCon, DeCon-SL and DeCon-ML checkpoints; see
`predec zoo list`), fine-tunes the variants (×Net with pre-trained / random decoder, FPN with pre-trained encoder,
FPN from DeCon-ML / DeCon-SL / SlotCon, ...) on SynthScenes over several seeds, evaluates them on held-out scenes and
writes report.md, results.json and PNG figures into DIR (default runs/demo). --from-scratch rebuilds the zoo entries
from their recipes first (stages zoo/<entry>, into DIR/zoo) instead of loading them. --benchmark is the hour-scale
study behind the claim: every variant, both tasks, 5 seeds, label budgets 32/128/512. Finished stages are reused on
the next run (it says so), failed stages are reported while the others run, and an interrupted run resumes.
Settings: predec/configs/demo/{quick,full,benchmark}.yaml, or --config FILE; overrides such as finetune.seeds=[0,1]
workers=1 are parsed as YAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from predec.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the small settings (quick.yaml): a few minutes")
    size.add_argument(
        "--benchmark", action="store_true", help="the label-efficiency study (benchmark.yaml): about an hour or more"
    )
    parser.add_argument(
        "--from-scratch", action="store_true", help="rebuild the zoo entries from their recipes first (into DIR/zoo)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)")
    parser.add_argument("--config", help="demo settings YAML (default: full.yaml, quick.yaml or benchmark.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.subkey=value", help="settings overrides (YAML values)")


def run(args: argparse.Namespace) -> int:
    """Run the demo. Exit codes: 0 every stage finished, 1 some stage failed (see the report), 2 bad settings or a
    missing / corrupt zoo entry, 130 interrupted."""
    from predec.demo import run_demo
    from predec.zoo.registry import ZooError

    source = args.config or ("quick" if args.quick else "benchmark" if args.benchmark else "full")
    try:
        results = run_demo(
            source, args.out, args.overrides, echo=lambda line: print(line, flush=True), from_scratch=args.from_scratch
        )
    except (ConfigError, ZooError) as err:  # bad settings; a missing or corrupt zoo entry, named with the fix
        print(f"predec demo: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    failed = [n for n, r in results["stages"].items() if r["state"] not in ("done", "cached")]
    if failed:
        print(f"{len(failed)} stage(s) did not finish: see {args.out / 'report.md'} (section 'Failed stages').")
        return 1
    return 0

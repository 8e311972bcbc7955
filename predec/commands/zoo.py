"""The model zoo: list predec's pre-trained weights, or rebuild them from their recipes.

  predec zoo list [--json]
  predec zoo build NAME [NAME ...] | --all  [--out DIR] [--overwrite] [--no-progress] [key.subkey=value ...]

Entries are weights predec produced on its embedded data (SynthObjects classifiers; SlotCon, DeCon-SL and DeCon-ML
checkpoints on SynthScenes), shipped in predec/zoo/weights with a manifest each (command, recipe, steps, metric,
curve, wall time, machine, sha256). Use one as a weight spec: encoder_weights="predec:NAME" (checked against its
sha256 before loading). `list` shows every entry, its architecture, the metric it reached, its size and sha256,
and whether its file verifies. `build` re-runs an entry's recipe (predec/configs/zoo/NAME.yaml; the entries it
starts from are built first with --all, else looked up in DIR, $PREDEC_ZOO_DIR and the package) and writes
DIR/NAME.safetensors + DIR/NAME.json (default DIR: runs/zoo); set PREDEC_ZOO_DIR=DIR to use them by name.
Overrides apply to every entry built and are recorded in the manifests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from predec.commands import error_message
from predec.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``zoo`` actions and options to ``parser``."""
    parser.add_argument("action", choices=("list", "build"), help="list the entries, or build some")
    parser.add_argument("names", nargs="*", metavar="NAME | key.subkey=value", help="entries to build, overrides")
    parser.add_argument("--all", action="store_true", help="build: every entry, in dependency order")
    parser.add_argument("--out", type=Path, default=Path("runs/zoo"), help="build: output directory (runs/zoo)")
    parser.add_argument("--overwrite", action="store_true", help="build: discard an interrupted build, start over")
    parser.add_argument("--no-progress", action="store_true", help="build: no progress bar")
    parser.add_argument("--json", action="store_true", help="list: print the manifests' summary as JSON")


def _architecture(model: dict) -> str:
    encoder = model.get("encoder", "?")
    channels = (model.get("encoder_kwargs") or {}).get("channels")
    if channels:
        encoder += f" (channels {'-'.join(str(c) for c in channels)})"
    if model.get("arch"):
        width = (model.get("decoder_kwargs") or {}).get("channels")
        encoder += f" + {model['arch']}" + (f" ({width} ch)" if width else "")
    return encoder


def _metric(manifest: dict) -> str:
    metric = manifest.get("metric") or {}
    value = metric.get("value")
    if value is None:
        return "—"
    if metric.get("name") == "top1":
        return f"top-1 {value:.3f} ({len(metric.get('classes') or [])} classes)"
    first = metric.get("first")
    return f"loss {first:.3f} → {value:.3f}" if first is not None else f"loss {value:.3f}"


def list_entries(as_json: bool) -> int:
    """Print every entry with its state (``ok``, ``CORRUPT``, ``missing file``, ``not built``)."""
    from predec.zoo.registry import ZooError, entry_names, find_entry

    rows = []
    for name in entry_names():
        try:
            entry = find_entry(name)
        except ZooError:
            rows.append({"name": name, "state": "not built"})
            continue
        try:
            entry.verify()
            state = "ok"
        except ZooError as err:
            state = "missing file" if not entry.file.is_file() else "CORRUPT"
            print(f"predec zoo: {err}", file=sys.stderr)
        m = entry.manifest
        rows.append(
            {
                "name": name,
                "state": state,
                "method": m.get("method"),
                "architecture": _architecture(m.get("model") or {}),
                "metric": _metric(m),
                "steps": m.get("steps"),
                "megabytes": round(m.get("bytes", 0) / 1e6, 1),
                "sha256": m.get("sha256"),
                "file": str(entry.file),
                "wall_seconds": m.get("wall_seconds"),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        columns = ("name", "method", "architecture", "metric")
        width = {c: max([len(c)] + [len(str(r.get(c) or "")) for r in rows]) for c in columns}
        print("  ".join(f"{c:{width[c]}s}" for c in columns) + f"  {'MB':>5s}  {'sha256':12s}  state")
        for r in rows:
            cells = "  ".join(f"{r.get(c) or ''!s:{width[c]}s}" for c in columns)
            if r["state"] == "not built":
                print(f"{cells}  {'':>5s}  {'':12s}  not built")
                continue
            print(f"{cells}  {r['megabytes']:5.1f}  {r['sha256'][:12]:12s}  {r['state']}")
    return 0 if all(r["state"] in ("ok", "not built") for r in rows) else 2


def run(args: argparse.Namespace) -> int:
    """List or build. Exit codes: 0 done, 1 stopped on NaN/Inf, 2 bad input or a corrupt entry."""
    if args.action == "list":
        return list_entries(args.json)
    from predec.zoo.registry import ZooError, recipe_names

    names = [n for n in args.names if "=" not in n]
    overrides = [n for n in args.names if "=" in n]
    if args.all:
        names = [*names, *recipe_names()]
    if not names:
        print(f"predec zoo build: name an entry ({', '.join(recipe_names())}) or pass --all", file=sys.stderr)
        return 2
    from predec.data.io import DataError
    from predec.engine.guards import NonFiniteLossError
    from predec.zoo.build import build_entry, build_order

    try:
        order = build_order(list(dict.fromkeys(names)))
        for name in order:
            build_entry(name, args.out, overrides, progress=not args.no_progress, overwrite=args.overwrite)
    except NonFiniteLossError as err:
        print(f"predec zoo build: stopped: {err}", file=sys.stderr)
        return 1
    except (ConfigError, ZooError, DataError, FileNotFoundError, ValueError) as err:
        print(f"predec zoo build: error: {error_message(err)}", file=sys.stderr)
        return 2
    print(f"Built {', '.join(order)} in {args.out}; use them by name with PREDEC_ZOO_DIR={args.out}.")
    return 0

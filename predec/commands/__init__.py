"""Sub-commands of the ``predec`` CLI (see :mod:`predec.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_arguments(parser: argparse.ArgumentParser, listed: str) -> None:
    """The options ``train`` and ``pretrain`` share: recipe, run directory, resume/overwrite, recipe listing.

    Args:
        parser: the sub-command's parser.
        listed: what ``--list`` lists (shown in its help).
    """
    parser.add_argument("--config", help="recipe: a YAML file or a shipped recipe name (see --list)")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: <output_dir>/<name> of the recipe)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CKPT",
        help="resume from CKPT, or from the run directory's last checkpoint without a value (or with 'last'; "
        "place --resume after the overrides); an interrupted run directory is resumed automatically anyway",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start from scratch, discarding the run directory's checkpoints (finished or interrupted)",
    )
    parser.add_argument("--list", action="store_true", help=f"list the shipped {listed} and exit")

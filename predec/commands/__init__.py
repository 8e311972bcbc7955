"""Sub-commands of the ``predec`` CLI (see :mod:`predec.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def error_message(err: BaseException) -> str:
    """The one line a command prints for a user-caused error: its message; for an error a DataLoader worker raised
    (torch re-raises it as ``Caught X in DataLoader worker process N.`` + the worker's traceback), the worker's own
    message, so a bad file reads the same with and without ``data.num_workers``."""
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        _, found, message = last.partition(f"{type(err).__name__}: ")
        text = message if found else last
    return text


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

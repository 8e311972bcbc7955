"""Sub-commands of the ``predec`` CLI (see :mod:`predec.cli`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def start_run(command: str, start: Callable[[], Any]) -> Any:
    """Call ``start`` (a training run) and turn the failures the docs promise into exit codes, each one printed as
    one line: 1 for a run stopped on a NaN/Inf loss or gradient, 2 for a user-caused error (bad recipe, key, file,
    unit or device; a run directory in use or already finished; a missing checkpoint).

    Returns:
        What ``start`` returned, or the exit code (an ``int``) of the failure.
    """
    from predec.config import ConfigError
    from predec.data.io import DataError
    from predec.engine.guards import NonFiniteLossError
    from predec.engine.run import RunExistsError
    from predec.engine.run_dir import RunLockedError

    try:
        return start()
    except NonFiniteLossError as err:
        print(f"predec {command}: stopped: {err}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, RunExistsError, RunLockedError, FileNotFoundError, ValueError) as err:
        print(f"predec {command}: error: {error_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused: a read-only or full disk, a file where a folder should be
        print(f"predec {command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2


def os_error_message(err: OSError) -> str:
    """One line for a file-system failure: what failed, on which path, and the system's reason."""
    paths = " → ".join(repr(str(p)) for p in (err.filename, err.filename2) if p is not None)
    reason = err.strerror or str(err)
    return f"{reason}: {paths}" if paths else reason


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

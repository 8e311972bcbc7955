"""The ``predec`` command line: one sub-command per module in :mod:`predec.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import predec

# Sub-command name -> module under predec.commands. Each module defines
# ``add_arguments(parser)`` and ``run(args) -> int``, plus a module docstring whose first line is the help.
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "data": "data",
    "pretrain": "pretrain",
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "export": "export",
    "bench": "bench",
    "zoo": "zoo",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="predec",
        description="Dense prediction (segmentation, depth) with pre-trained decoders (xNet, DeCon).",
    )
    parser.add_argument("--version", action="version", version=f"predec {predec.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"predec.commands.{module_name}")
        doc = (module.__doc__ or name).strip().splitlines()[0]
        cmd = sub.add_parser(
            name, help=doc, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may also follow the flags (``--overwrite trainer.max_steps=20``) and
    be written as flags, as in Lightning's and Hydra's command lines (``--trainer.max_steps=20``).

    argparse ends a positional list at the first flag, so overrides after one come back unknown: they join the
    command's overrides (``overrides``, or ``names`` for ``predec zoo``). Anything else unknown is an error.
    """
    args, unknown = parser.parse_known_args(argv)
    positional = next((name for name in ("overrides", "names") if isinstance(getattr(args, name, None), list)), None)
    unknown = [_flag_as_override(a) for a in unknown]
    if unknown and positional and all("=" in a and not a.startswith("-") for a in unknown):
        getattr(args, positional).extend(unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _flag_as_override(word: str) -> str:
    """``--trainer.max_steps=20`` → ``trainer.max_steps=20`` (a dotted key with a value); other words unchanged."""
    key, has_value, _ = word.partition("=")
    return word[2:] if word.startswith("--") and has_value and "." in key else word


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler writing to ``sys.stderr`` as it is at each message (pytest, notebooks and IDEs replace it;
    a handler holding the stream it started with would write to a closed one)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging.StreamHandler.__init__ sets it; sys.stderr is always used
        pass


def show_predec_info() -> None:
    """Print predec's INFO messages on stderr (which weights went into which part of the model, with the counts of
    loaded / missing / unexpected tensors), on the first process of a launch only; once per process."""
    log = logging.getLogger("predec")
    if any(isinstance(h, _CurrentStderrHandler) for h in log.handlers) or os.environ.get("RANK", "0") != "0":
        return
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``predec`` console script (``argv`` None: ``sys.argv``, and the process is first
    re-executed under the caching allocator, see :mod:`predec.allocator`; a list: run in this process as it is)."""
    if argv is None:
        from predec.allocator import reexec_with_allocator

        reexec_with_allocator(sys.argv[1:])
    show_predec_info()
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

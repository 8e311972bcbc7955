"""``python -m predec.bench MEASUREMENT_JSON OUT_JSON``: the fresh process that measures one configuration
(started by :func:`predec.bench.runs.measure_isolated`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from predec.bench.measure import measure
from predec.bench.spec import BenchConfig


def worker(argv: Sequence[str]) -> int:
    """``python -m predec.bench MEASUREMENT_JSON OUT_JSON``: run one measurement, write its row to OUT_JSON."""
    if len(argv) != 2:
        print("usage: python -m predec.bench MEASUREMENT_JSON OUT_JSON", file=sys.stderr)
        return 2
    row = measure(BenchConfig(**json.loads(argv[0])))
    Path(argv[1]).write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))

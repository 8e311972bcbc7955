"""Training curves of the zoo entries, read from their manifests (no training): the figure of ``docs/zoo.md``.

Usage::

    python benchmarks/plot_zoo_curves.py [--zoo DIR] [--out docs/images/zoo_curves.png]

One panel per entry: the training loss (means over bins of steps, as the manifest stores it) and, for the
classification entry, the held-out top-1 accuracy at each evaluation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: the package's)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/zoo_curves.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from predec.zoo.registry import package_dir

    zoo = args.zoo or package_dir()
    manifests = [json.loads(p.read_text()) for p in sorted(zoo.glob("*.json"))]
    if not manifests:
        raise SystemExit(f"No manifests in {zoo}.")
    fig, axes = plt.subplots(1, len(manifests), figsize=(3.4 * len(manifests), 3.0), squeeze=False)
    for ax, m in zip(axes[0], manifests):
        curve = m["curve"]["train/loss"]
        if curve:
            ax.plot([p[0] for p in curve], [p[1] for p in curve], color="tab:blue", lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss", color="tab:blue")
        minutes = m["wall_seconds"] / 60
        ax.set_title(f"{m['name']}\n{m['method']}, {m['steps']} steps, {minutes:.0f} min", fontsize=8)
        top1 = m["curve"].get("val/top1") or []
        if top1:
            twin = ax.twinx()
            twin.plot([p[0] for p in top1], [p[1] for p in top1], color="tab:red", marker="o", ms=3, lw=1)
            twin.set_ylabel("held-out top-1", color="tab:red")
            twin.set_ylim(0, 1)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()

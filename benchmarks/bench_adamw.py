"""Seconds per AdamW step on CPU: torch's default (per-parameter loop), foreach and fused kernels.

Usage::

    python benchmarks/bench_adamw.py [--steps 10] [--threads 1]

The parameters are those of ``create_model("fpn", encoder="resnet18", task="segmentation", num_classes=6)``
(13.8 M) with random gradients; ``predec.optim.build_optimizer`` uses the fused kernel where it applies.
"""

from __future__ import annotations

import argparse
import time

import torch

import predec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = predec.create_model("fpn", encoder="resnet18", task="segmentation", num_classes=6)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    for name, options in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(params, lr=1e-3, **options)
        optimizer.step()  # state allocation
        started = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        print(f"{name:8s} {(time.perf_counter() - started) / args.steps:.3f} s/step")


if __name__ == "__main__":
    main()

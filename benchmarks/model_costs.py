"""Parameter counts and FLOPs of ×Net vs FPN / U-Net (and the other decoders) for encoder × decoder pairs.

Usage::

    python benchmarks/model_costs.py [--size 256 256] [--archs xnet fpn unet] [--json FILE]

Random weights (nothing is downloaded). FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one
forward pass of one image (2 FLOPs per multiply-add; convolutions and matrix products only, so norms, activations
and interpolation are not counted). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

import predec

# (encoder, ×Net decoder backbone); FPN/U-Net use the same encoder and their own decoder.
PAIRS: list[tuple[str, str]] = [
    ("resnet18", "resnet18"),
    ("resnet50", "convnext_tiny"),
    ("convnext_tiny", "convnextv2_tiny"),
    ("resnet18", "convnext_atto"),
]


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def measure(arch: str, encoder: str, decoder: str | None, size: tuple[int, int]) -> dict:
    """Parameters (M) of the whole model and of its parts, and GFLOPs of one forward pass at ``size``."""
    model = predec.create_model(arch, encoder=encoder, decoder=decoder, task="segmentation", num_classes=21).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *size))
    return {
        "arch": arch,
        "encoder": encoder,
        "decoder": decoder or "-",
        "params_m": round(millions(model), 2),
        "encoder_params_m": round(millions(model.encoder), 2),
        "decoder_params_m": round(millions(model.decoder), 2),
        "gflops": round(counter.get_total_flops() / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--archs", nargs="+", default=["xnet", "fpn", "unet"], choices=predec.list_models())
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = tuple(args.size)
    rows, seen = [], set()
    for encoder, decoder in PAIRS:
        for arch in args.archs:
            key = (arch, encoder, decoder if arch == "xnet" else None)
            if key in seen:
                continue
            seen.add(key)
            rows.append(measure(arch, *key[1:], size))
    print(f"Input 1×3×{size[0]}×{size[1]}, segmentation head (21 classes), random weights.\n")
    print("| encoder | arch | decoder | params (M) | encoder (M) | decoder (M) | GFLOPs |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['encoder']} | {r['arch']} | {r['decoder']} | {r['params_m']:.2f} | {r['encoder_params_m']:.2f} "
            f"| {r['decoder_params_m']:.2f} | {r['gflops']:.2f} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"size": size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

"""Export a dense model to ONNX (dynamic batch, height and width), checked with onnxruntime.

  predec export --checkpoint CKPT --onnx FILE [--size H W] [--opset N] [--dynamo] [--no-check] [--atol X]

CKPT: a predec train checkpoint (.ckpt: the model is rebuilt from the recipe it records), a save_pretrained
directory (config.json + model.safetensors) or a .safetensors file with config.json beside it. A predec pretrain
checkpoint is refused: fine-tune a dense model from it first. The ONNX graph has input "image" (batch, channels,
height, width), normalised like the training images, and output "output" (depth in metres, or segmentation logits).
The graph takes any height and width of at least the model's output stride: it pads bottom/right by reflection to
the stride and crops back, as `predec predict` does (--size, the tracing size, is a multiple of the stride). After
export the file is run with onnxruntime at a second size that is not a multiple of the stride (H + stride + 7,
W + 2·stride + 13, batch 2) and compared with PyTorch; exit code 1 if the max abs difference exceeds --atol, 2 on bad
input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from predec.commands import error_message, os_error_message


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``export`` options to ``parser``."""
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="predec train .ckpt, save_pretrained dir or .safetensors file"
    )
    parser.add_argument("--onnx", required=True, type=Path, help="ONNX file to write")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="example input size (256 256)"
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    parser.add_argument(
        "--dynamo",
        action="store_true",
        help="use torch's dynamo exporter instead of the TorchScript one (much slower; for operators the TorchScript "
        "exporter lacks; ViT encoders are supported by neither)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted abs difference (default 1e-4)")


def run(args: argparse.Namespace) -> int:
    """Load, export, check. Exit codes: 0 ok, 1 check failed, 2 bad input."""
    import predec
    from predec.models.export import check_onnx, export_onnx

    checkpoint = Path(args.checkpoint)
    if args.onnx.is_dir():
        print(f"predec export: error: --onnx {args.onnx} is a directory: give the file to write, e.g. "
              f"{args.onnx / 'model.onnx'}.", file=sys.stderr)  # fmt: skip
        return 2
    try:
        if checkpoint.suffix == ".ckpt":  # predec train: the model of the recipe the checkpoint records
            from predec.engine.dense_checkpoint import load_dense_checkpoint, load_inference_module

            model = load_inference_module(load_dense_checkpoint(checkpoint)).model
        else:
            model = predec.from_pretrained(checkpoint)
        path = export_onnx(model, args.onnx, size=tuple(args.size), opset=args.opset, dynamo=args.dynamo)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"predec export: error: {error_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full disk, a path through a file
        print(f"predec export: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    print(f"wrote {path} (input 'image' (batch, {model.in_chans}, height, width), dynamic batch/height/width)")
    if args.no_check:
        return 0
    stride = model.output_stride
    size = (args.size[0] + stride + 7, args.size[1] + 2 * stride + 13)
    diff = check_onnx(model, path, size=size, batch_size=2)
    verdict = "ok" if diff <= args.atol else f"FAILED (> {args.atol:g})"
    print(f"onnxruntime vs PyTorch at 2×{size[0]}×{size[1]}: max abs diff {diff:.3g} {verdict}")
    return 0 if diff <= args.atol else 1

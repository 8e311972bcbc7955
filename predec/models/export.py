"""ONNX export with dynamic batch, height and width, checked against onnxruntime.

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``)
is the default. On this project's models it exports every architecture (xnet, fpn, unet, deeplabv3plus, fcn) with
CNN and Swin encoders in about 2 s on a CPU, and the graph matches PyTorch at other sizes (max abs diff ~1e-6). The
dynamo exporter (``dynamo=True``, torch's default) gave the same results for FPN and ×Net but took 60-85 s per tiny
model on the same CPU; it is kept as an option for operators the TorchScript exporter lacks.

The exported graph takes any height and width: it pads the image bottom/right by reflection to the model's output
stride and crops the output back, as ``DenseModel.predict`` does (:class:`StridePadded`), so onnxruntime and
``predec predict`` agree on every size at least one stride on each side.

Not supported: ViT-style encoders with dynamic image size. Their position-embedding resampling uses antialiased
bicubic interpolation, which the TorchScript exporter cannot express, and the dynamo exporter's graph failed in
onnxruntime at a batch/size other than the export one (measured with ``test_vit``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "output"
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


def _stride(model: nn.Module) -> int:
    return int(getattr(model, "output_stride", 1))


class StridePadded(nn.Module):
    """``model`` on any input size: reflect-pad bottom/right to its output stride, crop the output back (the padding
    of ``DenseModel.predict``, written with shape arithmetic that the ONNX exporters record as graph operations).

    Args:
        model: maps (B, C, H, W) images, H and W multiples of ``model.output_stride``, to (B, K, H, W).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stride = _stride(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pad_h = (self.stride - height % self.stride) % self.stride
        pad_w = (self.stride - width % self.stride) % self.stride
        y = self.model(nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))
        return y[..., :height, :width]


def _check_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    s = _stride(model)
    if h <= 0 or w <= 0 or h % s or w % s:
        raise ValueError(f"Export size {h}×{w} must be positive multiples of the model's output stride {s}.")
    return h, w


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    size: tuple[int, int] = (256, 256),
    batch_size: int = 1,
    opset: int = 18,
    dynamo: bool = False,
    pad_to_stride: bool = True,
) -> Path:
    """Export ``model`` (in eval mode) to ONNX with dynamic batch, height and width.

    Args:
        model: a ``DenseModel`` (or any module mapping (B, C, H, W) images to one tensor).
        path: the ``.onnx`` file to write (parent folders are created).
        size: (H, W) of the example input used for tracing; multiples of ``model.output_stride``.
        batch_size: batch size of the example input.
        opset: ONNX opset version.
        dynamo: use torch's dynamo-based exporter instead of the TorchScript-based one (module docstring).
        pad_to_stride: the graph pads any input size to the stride and crops back (:class:`StridePadded`); False:
            the graph takes multiples of the stride only.

    Returns:
        The written path. Input ``"image"`` (batch, in_chans, height, width) float32, height and width at least
        ``output_stride`` (any, with ``pad_to_stride``); output ``"output"`` (batch, channels, height, width).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = _check_size(model, size)
    in_chans = int(getattr(model, "in_chans", 3))
    example = torch.randn(batch_size, in_chans, h, w)
    was_training = model.training
    model.eval()
    try:
        common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, dynamo=dynamo)
        if dynamo:
            dim = torch.export.Dim.DYNAMIC
            axes = dict(dynamic_shapes=({axis: dim for axis in DYNAMIC_AXES},), verbose=False)
        else:
            axes = dict(dynamic_axes={INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: DYNAMIC_AXES})
        graph = StridePadded(model) if pad_to_stride and _stride(model) > 1 else model
        torch.onnx.export(graph, (example,), str(path), **common, **axes)
    finally:
        model.train(was_training)
    return path


def check_onnx(
    model: nn.Module, path: str | os.PathLike, *, size: tuple[int, int], batch_size: int = 2, seed: int = 0
) -> float:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch on the same random input.

    Args:
        model: the PyTorch model the file was exported from (run in eval mode, training mode restored after).
        path: the ``.onnx`` file.
        size: (H, W) of the test input, each at least the output stride; use one that differs from the export size
            (and is not a multiple of the stride) to check the dynamic axes and the padding. PyTorch's side pads as
            the graph does (:class:`StridePadded`, the padding of ``DenseModel.predict``).
        batch_size: batch size of the test input.
        seed: seed of the random input.

    Returns:
        The max absolute difference between the two outputs.
    """
    import onnxruntime

    h, w = (int(v) for v in size)
    if min(h, w) < _stride(model):
        raise ValueError(f"Check size {h}×{w}: each side must be at least the model's output stride {_stride(model)}.")
    in_chans = int(getattr(model, "in_chans", 3))
    x = torch.randn(batch_size, in_chans, h, w, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = StridePadded(model)(x).numpy() if _stride(model) > 1 else model(x).numpy()
    finally:
        model.train(was_training)
    if got.shape != want.shape:
        raise ValueError(f"ONNX output shape {got.shape} != PyTorch's {want.shape} at input {tuple(x.shape)}.")
    return float(np.abs(got - want).max())

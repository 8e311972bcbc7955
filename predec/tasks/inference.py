"""Model-agnostic dense inference: whole image, sliding window, multi-scale + flip.

``fn`` is any callable mapping images (B, 3, h, w) to dense outputs (B, C, h', w'); an output of another
size than its input is resized to the input size (bilinear, ``align_corners=False``) as mmsegmentation does.
Outputs are float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DenseFn = Callable[[Tensor], Tensor]
MMSEG_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
INFERENCE_MODES: tuple[str, ...] = ("whole", "slide")


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Inference input must be images (B, C, H, W); got {shape}.")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width) of positive ints; got {value!r}.")
    return pair  # type: ignore[return-value]


def _run(fn: DenseFn, x: Tensor, num_outputs: int | None = None) -> Tensor:
    """``fn(x)`` as float32, resized to x's size, checked to be (B, C, ·, ·)."""
    out = fn(x)
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"The inference function must return (B={x.shape[0]}, C, h, w); got {shape}.")
    if num_outputs is not None and out.shape[1] != num_outputs:
        raise ValueError(f"The inference function returned {out.shape[1]} channels; expected {num_outputs}.")
    out = out.float()
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def whole_inference(fn: DenseFn, x: Tensor) -> Tensor:
    """Run ``fn`` on the whole images.

    Args:
        fn: images (B, 3, H, W) → outputs (B, C, h, w).
        x: images (B, 3, H, W).

    Returns:
        Outputs (B, C, H, W), float32, resized to the input size if needed.
    """
    _check_images(x)
    return _run(fn, x)


def sliding_windows(
    height: int, width: int, *, crop: int | Sequence[int], stride: int | Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Window boxes of mmsegmentation's slide inference.

    ``grids = max(size − crop + stride − 1, 0) // stride + 1`` per axis; window k starts at ``k·stride`` and
    is shifted back so that it ends inside the image (the last window is aligned to the border). With an
    image smaller than the crop there is one window, clipped to the image.

    Args:
        height: image height H.
        width: image width W.
        crop: window (h, w) or one int for both.
        stride: step (h, w) or one int for both; must not exceed the crop (else pixels would be skipped).

    Returns:
        ``(y1, y2, x1, x2)`` for every window, row-major.
    """
    crop_h, crop_w = _pair(crop, "crop")
    stride_h, stride_w = _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride_h, stride_w} larger than crop {crop_h, crop_w} would leave pixels uncovered.")
    h_grids = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * stride_h + crop_h, height)
            x2 = min(w_idx * stride_w + crop_w, width)
            boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return boxes


def slide_inference(
    fn: DenseFn,
    x: Tensor,
    *,
    crop: int | Sequence[int],
    stride: int | Sequence[int],
    num_outputs: int | None = None,
) -> Tensor:
    """Sliding-window inference: window outputs summed into the image and divided by a count map.

    Windows as in :func:`sliding_windows`. Unlike mmsegmentation (which runs a smaller window), an image smaller
    than the crop is zero-padded at the bottom/right to the crop size and the output cropped back; 0 is the
    mean colour of normalised inputs.

    Args:
        fn: images (B, 3, crop_h, crop_w) → outputs (B, C, h, w).
        x: images (B, 3, H, W).
        crop: window (h, w) or one int.
        stride: step (h, w) or one int, at most the crop.
        num_outputs: expected C; checked if given.

    Returns:
        Outputs (B, C, H, W), float32.
    """
    _check_images(x)
    crop_h, crop_w = _pair(crop, "crop")
    height, width = x.shape[-2:]
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    padded_h, padded_w = x.shape[-2:]
    summed: Tensor | None = None
    count = torch.zeros(1, 1, padded_h, padded_w, device=x.device)
    for y1, y2, x1, x2 in sliding_windows(padded_h, padded_w, crop=crop, stride=stride):
        out = _run(fn, x[:, :, y1:y2, x1:x2], num_outputs)
        if summed is None:
            summed = out.new_zeros(x.shape[0], out.shape[1], padded_h, padded_w)
        summed[:, :, y1:y2, x1:x2] += out
        count[:, :, y1:y2, x1:x2] += 1
    assert summed is not None and bool((count > 0).all())  # guaranteed by sliding_windows
    return (summed / count)[:, :, :height, :width]


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(int(H·s + 0.5), int(W·s + 0.5))``, mmcv's rounding of a rescaled size (at least 1 pixel)."""
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def multiscale_flip_inference(
    fn: DenseFn,
    x: Tensor,
    *,
    scales: Sequence[float] = MMSEG_SCALES,
    flip: bool = True,
    mode: str = "whole",
    crop: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
) -> Tensor:
    """Multi-scale (+ horizontal flip) test-time augmentation for segmentation, as mmsegmentation's.

    For each scale s the images are resized (bilinear) to ``scaled_size(H, W, s)``, inferred (``mode``:
    whole or slide), optionally also flipped, inferred and flipped back; each output's logits are resized
    back to (H, W) and turned into softmax probabilities; the result is the mean of these probabilities
    (mmseg's ``aug_test`` / ``SegTTAModel`` average softmax outputs, not raw logits).

    Args:
        fn: images → logits (B, C, h, w), C ≥ 2.
        x: images (B, 3, H, W).
        scales: resize factors (mmseg's ``img_ratios`` by default).
        flip: also infer the horizontally flipped images.
        mode: ``"whole"`` or ``"slide"``.
        crop: slide window (needed for ``mode="slide"``).
        stride: slide step (needed for ``mode="slide"``).

    Returns:
        Averaged class probabilities (B, C, H, W), float32; argmax over C gives the labels.
    """
    _check_images(x)
    if mode not in INFERENCE_MODES:
        raise ValueError(f"Unknown inference mode {mode!r}; valid: {', '.join(INFERENCE_MODES)}.")
    if mode == "slide" and (crop is None or stride is None):
        raise ValueError("mode='slide' needs crop and stride.")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive factors; got {scales!r}.")
    height, width = x.shape[-2:]

    def infer(images: Tensor) -> Tensor:
        if mode == "slide":
            return slide_inference(fn, images, crop=crop, stride=stride)  # type: ignore[arg-type]
        return whole_inference(fn, images)

    probs_sum: Tensor | None = None
    for scale in scales:
        size = scaled_size(height, width, scale)
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        outputs = [infer(scaled)]
        if flip:
            outputs.append(infer(scaled.flip(-1)).flip(-1))
        for logits in outputs:
            if logits.shape[1] < 2:
                raise ValueError("multiscale_flip_inference averages softmax over C >= 2 classes; depth: flip_average.")
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            probs_sum = probs if probs_sum is None else probs_sum + probs
    assert probs_sum is not None
    return probs_sum / (len(scales) * (2 if flip else 1))

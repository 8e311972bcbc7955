"""Input normalisation of predec's models: uint8 RGB images → the normalised float tensors they take.

Every predec model (and every training and evaluation transform, :mod:`predec.data.transforms`) takes images as
``(x / 255 - mean) / std``, ImageNet's mean and std unless the model's config records others (``config.json``:
``mean``, ``std``). :func:`preprocess` does that for the inputs users have: a PIL image, a NumPy array from an
image reader, a uint8 tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _as_uint8_batch(images: Any) -> Tensor:
    """(B, C, H, W) uint8 tensor of a PIL image, an (H, W, C) / (B, H, W, C) uint8 array, a (C, H, W) /
    (B, C, H, W) uint8 tensor, or a list of those (one size)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("preprocess: an empty list of images.")
        parts = [_as_uint8_batch(image) for image in images]
        sizes = {tuple(p.shape[1:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(f"preprocess: images of different sizes {sorted(sizes)}; predict them one at a time.")
        return torch.cat(parts)
    if not isinstance(images, (np.ndarray, Tensor)) and hasattr(images, "convert"):  # a PIL image
        images = np.asarray(images.convert("RGB"))
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"preprocess: a NumPy image must be uint8 (0-255), got {images.dtype}.")
        if images.ndim == 2:
            images = np.repeat(images[..., None], 3, axis=2)
        if images.ndim not in (3, 4):
            raise ValueError(f"preprocess: expected an (H, W, C) or (B, H, W, C) array, got shape {images.shape}.")
        tensor = torch.from_numpy(np.array(images))  # a copy: read-only arrays (PIL's) are fine too
        tensor = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
        return tensor if tensor.ndim == 4 else tensor[None]
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(
                f"preprocess: a tensor image must be uint8 (0-255), got {images.dtype}; a float tensor is taken as "
                "already normalised by model.predict."
            )
        if images.ndim not in (3, 4):
            raise ValueError(f"preprocess: expected a (C, H, W) or (B, C, H, W) tensor, got {tuple(images.shape)}.")
        return images if images.ndim == 4 else images[None]
    raise TypeError(f"preprocess: cannot read a {type(images).__name__} as an image (PIL, NumPy uint8, uint8 tensor).")


def preprocess(
    images: Any,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalised float32 images (B, C, H, W): ``(x / 255 - mean) / std``.

    Args:
        images: a PIL image, an (H, W, C) or (B, H, W, C) uint8 array (grey (H, W) is repeated to RGB), a (C, H, W)
            or (B, C, H, W) uint8 tensor, or a list of these of one size.
        mean: per-channel mean of the model's inputs (ImageNet's by default).
        std: per-channel standard deviation.
        device: where to put the result (default: where the images are, the CPU for PIL and NumPy).

    Raises:
        TypeError: not an image of one of those kinds, or not uint8.
        ValueError: a wrong number of dimensions, channels other than ``len(mean)``, or images of several sizes.
    """
    batch = _as_uint8_batch(images)
    if batch.shape[1] != len(mean):
        raise ValueError(f"preprocess: {batch.shape[1]} channels, the model takes {len(mean)} (mean {tuple(mean)}).")
    batch = batch.to(device) if device is not None else batch
    scale = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    shift = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    return (batch.float() - shift) / scale

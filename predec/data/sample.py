"""The one sample format every predec dataset returns.

A sample is a dict:

- ``"image"``: :class:`torchvision.tv_tensors.Image`, uint8 (3, H, W) as read (float after normalisation).
- ``"labels"`` (segmentation sets): :class:`torchvision.tv_tensors.Mask`, int64 (H, W); 255 = ignore.
- ``"depth"`` (depth sets): :class:`Depth`, float32 (1, H, W) in metres; 0 = no ground truth.
- ``"meta"``: dict of plain values (``"path"``, ``"index"``, ``"focal"``, ``"dataset"``, ...).

:class:`Depth` is a ``Mask`` subclass, so torchvision.transforms.v2 resamples it with nearest-neighbour
interpolation (valid and invalid pixels are never blended) while its fill value (0 = invalid) can differ
from the labels' (255 = ignore).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IGNORE_INDEX = 255


class Depth(tv_tensors.Mask):
    """Metric depth map (1, H, W) float32 in metres, 0 where there is no ground truth."""


def make_sample(
    image: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | None = None,
    depth: np.ndarray | torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Wrap arrays into the common sample dict.

    Args:
        image: uint8 RGB, (H, W, 3) array or (3, H, W) tensor.
        labels: class ids (H, W), 255 = ignore.
        depth: metres (H, W) or (1, H, W), 0 = invalid.
        meta: extra plain values.

    Returns:
        The sample dict described in this module's docstring.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    sample: dict[str, Any] = {"image": tv_tensors.Image(image)}
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
        sample["labels"] = tv_tensors.Mask(labels.to(torch.int64))
    if depth is not None:
        depth = torch.as_tensor(np.asarray(depth, dtype=np.float32) if isinstance(depth, np.ndarray) else depth)
        sample["depth"] = Depth(depth.reshape(1, *depth.shape[-2:]).to(torch.float32))
    sample["meta"] = dict(meta or {})
    return sample


def transform_sample(transform: Callable[[dict[str, Any]], Any] | None, sample: dict[str, Any]) -> Any:
    """``transform`` applied to ``sample``.

    A torchvision v2 transform (``v2.Compose`` of predec's dense pipelines) gets the tensors only and ``"meta"`` is
    passed through untouched to an output in the sample format (a dict with ``"image"``; one that returns something
    else, e.g. SlotCon's two views, drops meta as it did when it saw it): v2 transforms walk every leaf of their input
    (a nested intrinsics list is nine leaves) in each of their steps and change only the tensors. Any other callable
    gets the whole sample, meta included.
    """
    if transform is None:
        return sample
    if "meta" not in sample or not isinstance(transform, v2.Transform):
        return transform(sample)
    output = transform({key: value for key, value in sample.items() if key != "meta"})
    if isinstance(output, dict) and "image" in output:
        return {**output, "meta": sample["meta"]}
    return output

"""Transforms on the common sample dict (torchvision.transforms.v2) and SlotCon's two-view crop.

Dense tasks (:func:`train_transform`, :func:`eval_transform`): geometry is applied jointly to ``"image"``,
``"labels"`` and ``"depth"``; labels and depth (a ``Mask`` subclass) are resampled with nearest neighbour, so valid
and invalid depth pixels are never blended, and padding fills labels with 255 (ignore) and depth with 0 (invalid).
Photometric augmentation touches the image only. Normalisation turns the uint8 image into float
``(x / 255 - mean) / std``; labels stay int64 and depth float32 metres.

Self-supervised (:class:`TwoViewCrop`): two RandomResizedCrops of one image whose overlap is guaranteed, each view's
overlap box in its own frame and its flip flag, as SlotCon / DeCon need (``docs/datasets.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision.transforms as T
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from predec.data.sample import IGNORE_INDEX, Depth
from predec.models.preprocess import IMAGENET_MEAN, IMAGENET_STD  # the models' input normalisation

FILL: dict[type, int] = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX, Depth: 0}
"""Padding values by sample entry type: image black, labels ignore (255), depth invalid (0)."""

TASKS = ("segmentation", "depth")

# Per-task defaults of train_transform: segmentation follows mmseg/DeepLab (random scale 0.5-2, no rotation);
# depth follows BTS (no rescaling, which would change the metric depth a pixel shows; small rotation).
_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "segmentation": {"scale_range": (0.5, 2.0), "rotation": 0.0},
    "depth": {"scale_range": (1.0, 1.0), "rotation": 2.5},
}


class RandomScale(v2.Transform):
    """Resize every entry of a sample by one random factor (labels and depth with nearest neighbour).

    The factor is ``s ~ U(scale_range)``, times ``min(base_h / H, base_w / W)`` when ``base_size`` is given
    (mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)``), so images of different sizes are first
    brought to a common scale.

    Args:
        scale_range: (low, high) of the random factor.
        base_size: optional (H, W) the image is fitted into before the random factor.
        interpolation: for the image (labels and depth always use nearest).
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: tuple[int, int] | None = None,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    ) -> None:
        super().__init__()
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range={scale_range!r}: expected (low, high) with 0 < low <= high")
        self.scale_range, self.base_size, self.interpolation = tuple(scale_range), base_size, interpolation

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        spatial = [x for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask))]
        if not spatial:
            raise TypeError("RandomScale needs a tv_tensors.Image or Mask in its input")
        height, width = F.get_size(spatial[0])
        low, high = self.scale_range
        factor = low + float(torch.rand(())) * (high - low)
        if self.base_size is not None:
            factor *= min(self.base_size[0] / height, self.base_size[1] / width)
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=self.interpolation, antialias=True)


class RandomGamma(v2.Transform):
    """Gamma correction ``x ** gamma`` (on [0, 1]) of the image only, ``gamma ~ U(gamma_range)``, with probability p."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, gamma_range: tuple[float, float] = (0.9, 1.1), p: float = 0.5) -> None:
        super().__init__()
        if not 0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"gamma_range={gamma_range!r}: expected (low, high) with 0 < low <= high")
        self.gamma_range, self.p = tuple(gamma_range), p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.gamma_range
        apply = float(torch.rand(())) < self.p
        return {"gamma": low + float(torch.rand(())) * (high - low) if apply else None}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["gamma"] is None:
            return inpt
        return self._call_kernel(F.adjust_gamma, inpt, gamma=params["gamma"])


def normalize(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """uint8 image → float32 ``(x / 255 - mean) / std``; labels and depth untouched."""
    return v2.Compose(
        [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]
    )


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"size={size!r}: expected a positive int or (height, width)")
    return int(pair[0]), int(pair[1])


def train_transform(
    task: str,
    size: int | Sequence[int],
    *,
    scale_range: tuple[float, float] | None = None,
    base_size: tuple[int, int] | None = None,
    rotation: float | None = None,
    hflip: float = 0.5,
    color_jitter: tuple[float, float, float, float] | None = (0.25, 0.25, 0.25, 0.0),
    color_jitter_p: float = 0.5,
    gamma: tuple[float, float] | None = (0.9, 1.1),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Training augmentation of a sample dict for a dense task.

    Order: random scale → random rotation → random crop to ``size`` (padded with :data:`FILL` where the scaled image
    is smaller) → horizontal flip → colour jitter and gamma (image only) → normalisation.

    Args:
        task: ``"segmentation"`` or ``"depth"`` (picks the defaults of ``scale_range`` and ``rotation``).
        size: output crop, int or (H, W).
        scale_range: random rescale factor range; default (0.5, 2.0) for segmentation, (1, 1) = none for depth.
        base_size: optional (H, W) images are fitted into before the random factor (see :class:`RandomScale`).
        rotation: maximal rotation in degrees (uniform in ±rotation); default 0 for segmentation, 2.5 for depth.
        hflip: probability of a horizontal flip.
        color_jitter: (brightness, contrast, saturation, hue) of ``v2.ColorJitter``; ``None`` = off.
        color_jitter_p: probability of applying the colour jitter.
        gamma: gamma range (applied with probability 0.5); ``None`` = off.
        mean: normalisation mean (ImageNet by default).
        std: normalisation standard deviation.

    Returns:
        A transform mapping a uint8 sample dict to a normalised one of spatial size ``size``.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    defaults = _TASK_DEFAULTS[task]
    scale_range = defaults["scale_range"] if scale_range is None else tuple(scale_range)
    rotation = defaults["rotation"] if rotation is None else float(rotation)
    steps: list[Any] = []
    if scale_range != (1.0, 1.0) or base_size is not None:
        steps.append(RandomScale(scale_range, base_size))
    if rotation > 0:
        steps.append(v2.RandomRotation(rotation, interpolation=InterpolationMode.BILINEAR, fill=FILL))
    steps.append(v2.RandomCrop(_pair(size), pad_if_needed=True, fill=FILL))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter is not None:
        steps.append(v2.RandomApply([v2.ColorJitter(*color_jitter)], p=color_jitter_p))
    if gamma is not None:
        steps.append(RandomGamma(gamma, p=0.5))
    steps.append(normalize(mean, std))
    return v2.Compose(steps)


def eval_transform(*, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Evaluation transform of a sample dict: normalisation only (labels and depth stay at full resolution)."""
    return normalize(mean, std)


def slotcon_view_transform(
    view: int, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """SlotCon's photometric pipeline for view 1 or 2 of a uint8 image, ending with normalisation.

    ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur σ ∈ [0.1, 2] with p 1.0 (view 1) or
    0.1 (view 2), solarize at 128 with p 0 (view 1) or 0.2 (view 2).
    """
    if view not in (1, 2):
        raise ValueError(f"view={view!r}: expected 1 or 2")
    kernel = min(13, size if size % 2 else size - 1)  # 13 = 2·ceil(3σ_max)+1 covers σ ≤ 2
    steps: list[Any] = [
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=1.0 if view == 1 else 0.1),
    ]
    if view == 2:
        steps.append(v2.RandomSolarize(threshold=128, p=0.2))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


class TwoViewCrop:
    """Two random resized crops of one image with a guaranteed overlap, for SlotCon / DeCon pre-training.

    Crops are drawn like ``RandomResizedCrop(size, scale, ratio)``. The second must cover at least
    ``min_overlap`` of its own area with the first: up to ``max_tries`` second crops are drawn per first crop and up
    to ``max_tries`` first crops; if none qualifies a ``RuntimeError`` gives the crop parameters. Each view is
    flipped horizontally with probability ``hflip``.

    The overlap of the two crops is returned in each view's own frame as ``(x1, y1, x2, y2)`` normalised to [0, 1]
    (x mirrored, ``x ↦ 1 - x``, when that view was flipped), so that
    ``roi_align(map_k, box_k · (W, H), aligned=True)``, flipped back when ``flip_k``, shows the same image region in
    both views, pixel for pixel.

    Args:
        size: output side of each view.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        min_overlap: minimal intersection as a fraction of the second crop's area, in (0, 1].
        max_tries: tries per crop (see above).
        hflip: flip probability of each view.
        interpolation: resampling of the crops (SlotCon: bicubic).
        photometric: apply :func:`slotcon_view_transform` (needs a uint8 image); otherwise only normalisation.
        mean: normalisation mean.
        std: normalisation standard deviation.

    Call it on a sample dict (uses its ``"image"``) or an image tensor (3, H, W). Returns
    ``{"view1": (3, S, S) float, "view2": ..., "box1": (4,) float32, "box2": ..., "flip1": bool tensor, "flip2": ...}``.
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        min_overlap: float = 0.01,
        max_tries: int = 10,
        hflip: float = 0.5,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if not 0 < min_overlap <= 1:
            raise ValueError(f"min_overlap={min_overlap!r}: expected a fraction in (0, 1]")
        if max_tries < 1:
            raise ValueError(f"max_tries={max_tries!r}: expected >= 1")
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)
        self.min_overlap, self.max_tries, self.hflip = float(min_overlap), int(max_tries), float(hflip)
        self.interpolation, self.photometric = interpolation, photometric
        if photometric:
            self.view_transforms = (
                slotcon_view_transform(1, self.size, mean, std),
                slotcon_view_transform(2, self.size, mean, std),
            )
        else:
            self.view_transforms = (normalize(mean, std), normalize(mean, std))

    def crop_params(self, image: torch.Tensor) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """Draw the two crops ``(top, left, height, width)`` of ``image`` with the required overlap."""
        crop1 = crop2 = (0, 0, 0, 0)
        for _ in range(self.max_tries):
            crop1 = T.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
            for _ in range(self.max_tries):
                crop2 = T.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
                if _intersection(crop1, crop2) >= self.min_overlap * crop2[2] * crop2[3]:
                    return crop1, crop2
        height, width = image.shape[-2:]
        raise RuntimeError(
            f"TwoViewCrop: no pair of crops of a {height}x{width} (HxW) image overlapped by min_overlap="
            f"{self.min_overlap} of the second crop's area in {self.max_tries}x{self.max_tries} tries "
            f"(last crops (top, left, height, width): {crop1} and {crop2}; scale={self.scale}, ratio={self.ratio}); "
            "lower min_overlap or raise scale"
        )

    def __call__(self, sample: dict[str, Any] | torch.Tensor) -> dict[str, torch.Tensor]:
        image = sample["image"] if isinstance(sample, dict) else sample
        if self.photometric and image.dtype != torch.uint8:
            raise TypeError(f"TwoViewCrop(photometric=True) expects a uint8 image (as readers give), got {image.dtype}")
        image = tv_tensors.Image(image)
        crops = self.crop_params(image)
        output: dict[str, torch.Tensor] = {}
        for k, (crop, other) in enumerate((crops, crops[::-1]), start=1):
            top, left, height, width = crop
            view = F.resized_crop(
                image, top, left, height, width, [self.size, self.size], self.interpolation, antialias=True
            )
            flip = bool(torch.rand(()) < self.hflip)
            box = _overlap_box(crop, other)
            if flip:
                view = F.horizontal_flip(view)
                box = (1.0 - box[2], box[1], 1.0 - box[0], box[3])
            output[f"view{k}"] = self.view_transforms[k - 1](view)
            output[f"box{k}"] = torch.tensor(box, dtype=torch.float32)
            output[f"flip{k}"] = torch.tensor(flip)
        return {key: output[key] for key in ("view1", "view2", "box1", "box2", "flip1", "flip2")}

    def __repr__(self) -> str:
        return (
            f"TwoViewCrop(size={self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}, "
            f"min_overlap={self.min_overlap}, max_tries={self.max_tries}, hflip={self.hflip}, "
            f"interpolation={self.interpolation.value}, photometric={self.photometric})"
        )


def _intersection(crop1: Sequence[int], crop2: Sequence[int]) -> int:
    """Intersection area of two ``(top, left, height, width)`` crops."""
    top1, left1, height1, width1 = crop1
    top2, left2, height2, width2 = crop2
    overlap_h = min(top1 + height1, top2 + height2) - max(top1, top2)
    overlap_w = min(left1 + width1, left2 + width2) - max(left1, left2)
    return max(overlap_h, 0) * max(overlap_w, 0)


def _overlap_box(crop: Sequence[int], other: Sequence[int]) -> tuple[float, float, float, float]:
    """The intersection of ``crop`` and ``other`` as (x1, y1, x2, y2) normalised to ``crop``'s own frame."""
    top, left, height, width = crop
    x1, y1 = max(left, other[1]), max(top, other[0])
    x2, y2 = min(left + width, other[1] + other[3]), min(top + height, other[0] + other[2])
    return ((x1 - left) / width, (y1 - top) / height, (x2 - left) / width, (y2 - top) / height)

"""Monocular depth: SILog loss, per-image metrics, evaluation crops and flip averaging.

Functions on tensors; nothing here knows about models, datasets or Lightning. Depth tensors are metres,
shaped (B, 1, H, W); a ground-truth pixel counts only if ``min_depth < gt < max_depth``. The exact formulas
and which toolbox each follows are in ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

SILOG_VARIANTS: tuple[str, ...] = ("adabins", "bts")
DEPTH_METRIC_NAMES: tuple[str, ...] = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
DEPTH_METRIC_GOALS: dict[str, str] = {
    name: "max" if name in ("d1", "d2", "d3") else "min" for name in DEPTH_METRIC_NAMES
}
"""Whether each depth metric is better higher (``"max"``) or lower (``"min"``)."""
DEPTH_MAIN_METRIC = "abs_rel"
"""The metric that selects a depth model (``trainer.monitor: auto``)."""
NYU_SIZE: tuple[int, int] = (480, 640)
KB_CROP_SIZE: tuple[int, int] = (352, 1216)
# Tiny floor under the SILog radicand: sqrt has an infinite slope at 0 (e.g. pred == gt everywhere).
_SILOG_FLOOR = 1e-12


def _check_depth_tensor(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dim() != 4 or t.shape[1] != 1:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a depth tensor of shape (B, 1, H, W); got {shape}.")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point depth in metres; got dtype {t.dtype}.")


def _check_range(min_depth: float, max_depth: float | None) -> None:
    if min_depth < 0:
        raise ValueError(f"min_depth must be >= 0; got {min_depth}.")
    if max_depth is not None and max_depth <= min_depth:
        raise ValueError(f"max_depth must be > min_depth; got min_depth={min_depth}, max_depth={max_depth}.")


def _check_eval_min_depth(min_depth: float) -> None:
    if min_depth <= 0:
        raise ValueError(
            f"Depth evaluation needs min_depth > 0 (predictions are clamped to it, then logged); got {min_depth}. "
            "The NYU and KITTI protocols use 1e-3."
        )


def valid_depth_mask(gt: Tensor, min_depth: float, max_depth: float | None = None) -> Tensor:
    """Pixels with usable ground truth: ``min_depth < gt`` and, if given, ``gt < max_depth``.

    Args:
        gt: ground-truth depth, any shape, metres (0 = no measurement).
        min_depth: exclusive lower bound.
        max_depth: exclusive upper bound, or None for no upper bound.

    Returns:
        Boolean tensor of ``gt``'s shape.
    """
    mask = gt > min_depth
    if max_depth is not None:
        mask &= gt < max_depth
    return mask


def silog_loss(
    pred: Tensor,
    gt: Tensor,
    *,
    variant: str = "adabins",
    lambd: float = 0.85,
    scale: float = 10.0,
    eps: float = 1e-3,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
) -> Tensor:
    """Scale-invariant log loss over all valid pixels of the batch (pooled, not per image).

    With ``g = log(pred + eps) − log(gt + eps)`` on the valid pixels (``min_depth < gt < max_depth``):

    - ``"adabins"`` (AdaBins, Monocular-Depth-Estimation-Toolbox ``SigLoss``; ×Net's depth loss):
      ``scale · sqrt(var(g) + (1 − lambd) · mean(g)²)`` with the unbiased variance (n − 1).
    - ``"bts"`` (BTS ``silog_loss``): ``scale · sqrt(mean(g²) − lambd · mean(g)²)``.

    The two differ only in the variance estimator: adabins = bts + var_biased(g) / (n − 1) under the root.
    With one valid pixel the adabins variance is taken as 0. The prediction is first resized to the ground
    truth's size (bilinear, ``align_corners=False``) if the sizes differ. Computed in float32.

    Args:
        pred: predicted depth (B, 1, h, w), metres, positive.
        gt: ground-truth depth (B, 1, H, W), metres, 0 = invalid.
        variant: ``"adabins"`` or ``"bts"``.
        lambd: variance focus λ (0.85 in both papers).
        scale: factor outside the root (10 in both papers).
        eps: added inside both logarithms (1e-3 in the toolbox; BTS uses 0).
        min_depth: exclusive lower bound of valid ground truth.
        max_depth: exclusive upper bound of valid ground truth, or None.

    Returns:
        Scalar loss. Without any valid pixel: a zero that keeps the graph (``pred.sum() * 0``), never NaN.
    """
    _check_depth_tensor("pred", pred)
    _check_depth_tensor("gt", gt)
    _check_range(min_depth, max_depth)
    if variant not in SILOG_VARIANTS:
        raise ValueError(f"Unknown SILog variant {variant!r}; valid: {', '.join(SILOG_VARIANTS)}.")
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"pred and gt batch sizes differ: {pred.shape[0]} vs {gt.shape[0]}.")
    pred = pred.float()
    gt = gt.float()
    if pred.shape[-2:] != gt.shape[-2:]:
        pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    mask = valid_depth_mask(gt, min_depth, max_depth)
    num_valid = int(mask.sum())
    if num_valid == 0:
        return pred.sum() * 0.0
    g = torch.log(pred[mask] + eps) - torch.log(gt[mask] + eps)
    mean = g.mean()
    if variant == "adabins":
        variance = g.var(correction=1) if num_valid > 1 else g.new_zeros(())
        radicand = variance + (1.0 - lambd) * mean**2
    else:
        radicand = (g**2).mean() - lambd * mean**2
    return scale * torch.sqrt(radicand.clamp_min(_SILOG_FLOOR))


def eigen_crop_mask(h: int, w: int) -> Tensor:
    """NYU-Depth-v2 Eigen evaluation crop: rows 45:471, cols 41:601 of a 480×640 map.

    Defined only at NYU's native size (other sizes raise; no rescaled variant is guessed).

    Returns:
        Boolean (h, w) mask, True inside the crop.
    """
    if (h, w) != NYU_SIZE:
        raise ValueError(
            f"The NYU Eigen crop is defined on {NYU_SIZE[0]}×{NYU_SIZE[1]} ground truth; got {h}×{w}. "
            "Evaluate at the original resolution, or use crop=None."
        )
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[45:471, 41:601] = True
    return mask


def _fractional_crop_mask(h: int, w: int, rows: tuple[float, float], cols: tuple[float, float]) -> Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)] = True
    return mask


def garg_crop_mask(h: int, w: int) -> Tensor:
    """KITTI Garg crop: rows int(0.40810811·h):int(0.99189189·h), cols int(0.03594771·w):int(0.96405229·w).

    Returns:
        Boolean (h, w) mask, True inside the crop.
    """
    return _fractional_crop_mask(h, w, (0.40810811, 0.99189189), (0.03594771, 0.96405229))


def eigen_kitti_crop_mask(h: int, w: int) -> Tensor:
    """KITTI Eigen crop: rows int(0.3324324·h):int(0.91351351·h), cols int(0.0359477·w):int(0.96405229·w).

    Returns:
        Boolean (h, w) mask, True inside the crop.
    """
    return _fractional_crop_mask(h, w, (0.3324324, 0.91351351), (0.0359477, 0.96405229))


CROP_MASKS: dict[str, Callable[[int, int], Tensor]] = {
    "eigen": eigen_crop_mask,
    "garg": garg_crop_mask,
    "eigen_kitti": eigen_kitti_crop_mask,
}


def kb_crop(image: Any) -> Any:
    """KITTI benchmark crop: the 352×1216 window at the bottom centre (top = H − 352, left = (W − 1216) // 2).

    Args:
        image: a tensor (..., H, W) (tv_tensors keep their type) or a PIL image.

    Returns:
        The cropped input, same type.
    """
    crop_h, crop_w = KB_CROP_SIZE
    if isinstance(image, Image.Image):
        width, height = image.size
    elif isinstance(image, Tensor) and image.dim() >= 2:
        height, width = image.shape[-2:]
    else:
        raise TypeError(f"kb_crop takes a tensor (..., H, W) or a PIL image; got {type(image).__name__}.")
    if height < crop_h or width < crop_w:
        raise ValueError(f"kb_crop needs an image of at least {crop_h}×{crop_w}; got {height}×{width}.")
    top, left = height - crop_h, (width - crop_w) // 2
    if isinstance(image, Image.Image):
        return image.crop((left, top, left + crop_w, top + crop_h))
    out = image[..., top : top + crop_h, left : left + crop_w]
    return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.TVTensor) else out


def flip_average(predict_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Test-time horizontal flip averaging: ``(f(x) + flip(f(flip(x)))) / 2``.

    Args:
        predict_fn: maps images (B, 3, H, W) to dense outputs (B, C, h, w).
        x: input images (B, 3, H, W).

    Returns:
        The averaged output (B, C, h, w).
    """
    return 0.5 * (predict_fn(x) + predict_fn(x.flip(-1)).flip(-1))


def _resolve_crop(crop: str | Tensor | None, h: int, w: int, device: torch.device) -> Tensor | None:
    if crop is None:
        return None
    if isinstance(crop, str):
        if crop not in CROP_MASKS:
            raise ValueError(f"Unknown depth evaluation crop {crop!r}; valid: {', '.join(CROP_MASKS)} or None.")
        return CROP_MASKS[crop](h, w).to(device)
    if isinstance(crop, Tensor) and crop.dtype == torch.bool and tuple(crop.shape) == (h, w):
        return crop.to(device)
    shape = tuple(crop.shape) if isinstance(crop, Tensor) else type(crop).__name__
    raise ValueError(f"crop must be a name ({', '.join(CROP_MASKS)}), None, or a bool ({h}, {w}) mask; got {shape}.")


def depth_metrics(
    pred: Tensor,
    gt: Tensor,
    *,
    min_depth: float,
    max_depth: float,
    crop: str | Tensor | None = None,
) -> dict[str, Tensor]:
    """Standard depth metrics of each image (BTS / Monocular-Depth-Estimation-Toolbox / mmseg formulas).

    Evaluated pixels: ``min_depth < gt < max_depth`` and inside ``crop``. The prediction is clamped to
    ``[min_depth, max_depth]`` before scoring. Prediction and ground truth must have the same size: resize the
    prediction first (``whole_inference`` does) — a mismatch raises instead of being resized silently.
    Computed in float64. With ``r = max(gt/pred, pred/gt)``, ``e = log pred − log gt``, means over the
    evaluated pixels of one image:

    d1, d2, d3 = mean(r < 1.25^k); abs_rel = mean(|pred − gt| / gt); sq_rel = mean((pred − gt)² / gt);
    rmse = sqrt(mean((pred − gt)²)); rmse_log = sqrt(mean(e²)); log10 = mean(|log10 pred − log10 gt|);
    silog = 100 · sqrt(mean(e²) − mean(e)²).

    Args:
        pred: predicted depth (B, 1, H, W), metres.
        gt: ground-truth depth (B, 1, H, W), metres, 0 = invalid.
        min_depth: exclusive lower bound of evaluated ground truth, > 0 (NYU and KITTI: 1e-3).
        max_depth: exclusive upper bound (NYU 10, KITTI 80).
        crop: None, ``"eigen"`` (NYU), ``"garg"`` or ``"eigen_kitti"`` (KITTI), or a bool (H, W) mask.

    Returns:
        ``{name: (B,) float64}`` for each of ``DEPTH_METRIC_NAMES`` (NaN for an image without evaluated pixel)
        and ``"valid_pixels"``: (B,) int64 count of evaluated pixels per image.
    """
    _check_depth_tensor("pred", pred)
    _check_depth_tensor("gt", gt)
    _check_range(min_depth, max_depth)
    _check_eval_min_depth(min_depth)
    if pred.shape != gt.shape:
        raise ValueError(
            f"Prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape; resize the "
            "prediction to the ground truth first (F.interpolate(pred, size=gt.shape[-2:], mode='bilinear'))."
        )
    if torch.isnan(pred).any():
        raise ValueError("The depth prediction contains NaN values; refusing to score it.")
    mask = valid_depth_mask(gt, min_depth, max_depth)
    crop_mask = _resolve_crop(crop, gt.shape[-2], gt.shape[-1], gt.device)
    if crop_mask is not None:
        mask &= crop_mask
    pred = pred.detach().double().clamp(min_depth, max_depth)
    gt = torch.where(mask, gt.detach().double(), 1.0)  # placeholder 1 keeps logs finite off-mask
    count = mask.sum(dim=(1, 2, 3))
    denom = count.double()  # 0 → per-image means become NaN (0 / 0)

    def image_mean(values: Tensor) -> Tensor:
        return torch.where(mask, values, 0.0).sum(dim=(1, 2, 3)) / denom

    ratio = torch.maximum(gt / pred, pred / gt)
    diff = pred - gt
    log_err = torch.log(pred) - torch.log(gt)
    mean_log_err = image_mean(log_err)
    out = {
        "d1": image_mean((ratio < 1.25).double()),
        "d2": image_mean((ratio < 1.25**2).double()),
        "d3": image_mean((ratio < 1.25**3).double()),
        "abs_rel": image_mean(diff.abs() / gt),
        "sq_rel": image_mean(diff**2 / gt),
        "rmse": image_mean(diff**2).sqrt(),
        "rmse_log": image_mean(log_err**2).sqrt(),
        "log10": image_mean((torch.log10(pred) - torch.log10(gt)).abs()),
        "silog": 100.0 * (image_mean(log_err**2) - mean_log_err**2).clamp_min(0.0).sqrt(),
    }
    out["valid_pixels"] = count
    return out


class DepthMetricAccumulator:
    """Dataset-level depth metrics: the mean over images of the per-image ``depth_metrics``.

    Images without any evaluated pixel are skipped and counted (``num_skipped``). The whole state is two
    tensors — ``sums`` (len(DEPTH_METRIC_NAMES),) float64 and ``counts`` (2,) int64 = [scored, skipped] — so
    a distributed evaluation all-reduces both with SUM (``state()``, reduce, ``load_state()``) before
    ``compute()``. The state lives on the device of the last update.
    """

    def __init__(self, *, min_depth: float, max_depth: float, crop: str | Tensor | None = None) -> None:
        _check_range(min_depth, max_depth)
        _check_eval_min_depth(min_depth)
        if isinstance(crop, str) and crop not in CROP_MASKS:
            raise ValueError(f"Unknown depth evaluation crop {crop!r}; valid: {', '.join(CROP_MASKS)} or None.")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.crop = crop
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.sums = torch.zeros(len(DEPTH_METRIC_NAMES), dtype=torch.float64)
        self.counts = torch.zeros(2, dtype=torch.int64)

    def update(self, pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
        """Score a batch and add it.

        Args:
            pred: predicted depth (B, 1, H, W).
            gt: ground-truth depth (B, 1, H, W).

        Returns:
            The batch's per-image metrics (see ``depth_metrics``).
        """
        per_image = depth_metrics(pred, gt, min_depth=self.min_depth, max_depth=self.max_depth, crop=self.crop)
        scored = per_image["valid_pixels"] > 0
        values = torch.stack([per_image[name] for name in DEPTH_METRIC_NAMES])  # (M, B)
        self.sums = self.sums.to(values.device) + values[:, scored].sum(dim=1)
        batch_counts = torch.stack([scored.sum(), (~scored).sum()]).to(torch.int64)
        self.counts = self.counts.to(values.device) + batch_counts
        return per_image

    def state(self) -> dict[str, Tensor]:
        """Copies of the state tensors (``sums``, ``counts``), to be SUM-reduced across processes."""
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Replace the state (e.g. by the all-reduced one)."""
        self.sums = state["sums"].to(torch.float64).clone()
        self.counts = state["counts"].to(torch.int64).clone()

    def merge(self, state: dict[str, Tensor]) -> None:
        """Add another accumulator's ``state()`` to this one."""
        self.sums = self.sums + state["sums"].to(self.sums)
        self.counts = self.counts + state["counts"].to(self.counts)

    def compute(self) -> dict[str, float]:
        """Means over the scored images, plus ``num_images`` (scored) and ``num_skipped``.

        Raises:
            ValueError: if no image had an evaluated pixel (an empty evaluation has no metrics).
        """
        scored, skipped = (int(c) for c in self.counts)
        if scored == 0:
            raise ValueError(
                f"Empty depth evaluation: no image had ground truth in ({self.min_depth}, {self.max_depth}) "
                f"inside crop {self.crop!r} ({skipped} images skipped). Check the depth scale and the valid range."
            )
        means = (self.sums / scored).tolist()
        result: dict[str, float] = dict(zip(DEPTH_METRIC_NAMES, means))
        result["num_images"] = scored
        result["num_skipped"] = skipped
        return result

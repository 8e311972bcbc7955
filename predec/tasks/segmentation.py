"""Semantic segmentation: cross-entropy loss and dataset-level mIoU / aAcc (mmsegmentation's convention).

Functions on tensors plus one small accumulator; nothing here knows about models, datasets or Lightning.
Labels are int64 (B, H, W) with ``ignore_index`` (255) for unlabelled pixels. Metric values are fractions
in [0, 1] (mmsegmentation logs the same numbers ×100). Details in ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
SEG_STATE_KEYS: tuple[str, ...] = ("area_intersect", "area_union", "area_pred_label", "area_label")
SEG_METRIC_GOALS: dict[str, str] = {"mIoU": "max", "aAcc": "max", "mAcc": "max"}
"""Whether each scalar segmentation metric is better higher (``"max"``) or lower (``"min"``)."""
SEG_MAIN_METRIC = "mIoU"
"""The metric that selects a segmentation model (``trainer.monitor: auto``)."""


def check_labels(
    labels: Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX, name: str = "labels"
) -> None:
    """Raise a ``ValueError`` unless ``labels`` holds integer class ids in [0, num_classes) or ``ignore_index``.

    Args:
        labels: class-id tensor, any shape.
        num_classes: number of classes C.
        ignore_index: the one value allowed outside [0, C), or None to allow none.
        name: what to call the tensor in the message.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids; got dtype {labels.dtype}.")
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:10].tolist()
        raise ValueError(
            f"{name} contain values {values} outside [0, {num_classes})"
            + ("" if ignore_index is None else f" that are not the ignore index {ignore_index}")
            + "; check num_classes and the label encoding (e.g. ADE20K's reduce_zero_label)."
        )


def _check_logits_labels(logits: Tensor, labels: Tensor, logits_name: str) -> None:
    if logits.dim() != 4:
        raise ValueError(f"{logits_name} must be (B, C, H, W); got shape {tuple(logits.shape)}.")
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W); got shape {tuple(labels.shape)}.")
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits_name} and labels batch sizes differ: {logits.shape[0]} vs {labels.shape[0]}.")


def _resize_to(logits: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def _weighted_ce(logits: Tensor, labels: Tensor, ignore_index: int, class_weights: Tensor | None) -> Tensor:
    """PyTorch's weighted mean: Σ w_y·nll / Σ w_y over non-ignored pixels; 0 (graph kept) if nothing counts."""
    per_pixel = F.cross_entropy(logits, labels, weight=class_weights, ignore_index=ignore_index, reduction="none")
    valid = labels != ignore_index
    if class_weights is None:
        denom = valid.sum().to(per_pixel.dtype)
    else:
        safe = torch.where(valid, labels, 0)
        denom = (class_weights[safe] * valid).sum()
    return per_pixel.sum() / denom.clamp_min(1e-12)


def cross_entropy_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    class_weights: Tensor | Sequence[float] | None = None,
    aux_logits: Tensor | None = None,
    aux_weight: float = 0.4,
) -> Tensor:
    """Pixel-wise cross-entropy with an ignore index, optional class weights and an optional auxiliary head.

    Logits of another size than the labels are resized to the label size first (bilinear,
    ``align_corners=False``). The mean is PyTorch's: ``Σ w_y·nll / Σ w_y`` over non-ignored pixels (without
    weights: the mean over non-ignored pixels, = mmseg's ``avg_non_ignore=True``). Computed in float32.
    Total = CE(logits) + aux_weight · CE(aux_logits).

    Args:
        logits: class scores (B, C, h, w).
        labels: class ids (B, H, W), int64, ``ignore_index`` = unlabelled.
        ignore_index: label value that contributes nothing.
        class_weights: (C,) weight per class, or None.
        aux_logits: scores of an auxiliary head (B, C, h', w'), or None.
        aux_weight: weight of the auxiliary loss (mmseg's FCN auxiliary head: 0.4).

    Returns:
        Scalar loss; 0 that keeps the graph if every pixel is ignored (never NaN).
    """
    _check_logits_labels(logits, labels, "logits")
    num_classes = logits.shape[1]
    check_labels(labels, num_classes, ignore_index)
    labels = labels.long()
    weights = None
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
        if weights.shape != (num_classes,):
            raise ValueError(f"class_weights need one value per class ({num_classes}); got {tuple(weights.shape)}.")
    loss = _weighted_ce(_resize_to(logits.float(), labels.shape[-2:]), labels, ignore_index, weights)
    if aux_logits is not None:
        _check_logits_labels(aux_logits, labels, "aux_logits")
        if aux_logits.shape[1] != num_classes:
            raise ValueError(f"aux_logits have {aux_logits.shape[1]} classes, logits have {num_classes}.")
        aux = _weighted_ce(_resize_to(aux_logits.float(), labels.shape[-2:]), labels, ignore_index, weights)
        loss = loss + aux_weight * aux
    return loss


def intersect_and_union(
    pred_labels: Tensor, labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class pixel areas of one batch, as mmsegmentation's ``intersect_and_union``.

    Pixels whose label is ``ignore_index`` are dropped from both prediction and label.

    Args:
        pred_labels: predicted class ids (B, H, W) in [0, C).
        labels: ground-truth class ids (B, H, W), ``ignore_index`` = unlabelled.
        num_classes: C.
        ignore_index: unlabelled value.

    Returns:
        ``(area_intersect, area_union, area_pred_label, area_label)``, each (C,) int64.
    """
    if pred_labels.shape != labels.shape:
        raise ValueError(
            f"Prediction {tuple(pred_labels.shape)} and labels {tuple(labels.shape)} differ in shape; resize the "
            "logits to the label size before taking the argmax."
        )
    check_labels(labels, num_classes, ignore_index)
    check_labels(pred_labels, num_classes, ignore_index=None, name="predicted labels")
    keep = labels != ignore_index
    pred = pred_labels[keep].long()
    label = labels[keep].long()
    area_intersect = torch.bincount(pred[pred == label], minlength=num_classes)
    area_pred_label = torch.bincount(pred, minlength=num_classes)
    area_label = torch.bincount(label, minlength=num_classes)
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


class SegMetricAccumulator:
    """Dataset-level segmentation metrics from per-class areas summed over all images (mmseg ``IoUMetric``).

    The state is four (C,) int64 tensors (``SEG_STATE_KEYS``); a distributed evaluation SUM-reduces them
    (``state()``, reduce, ``load_state()``) before ``compute()``. The state lives on the last update's device.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.areas = {key: torch.zeros(self.num_classes, dtype=torch.int64) for key in SEG_STATE_KEYS}

    def update(self, pred: Tensor, labels: Tensor) -> None:
        """Add a batch.

        Args:
            pred: predicted class ids (B, H, W) or class scores (B, C, H, W) (argmax over C is taken).
            labels: ground-truth class ids (B, H, W).
        """
        if pred.dim() == 4:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"Prediction scores have {pred.shape[1]} classes; expected {self.num_classes}.")
            pred = pred.argmax(dim=1)
        elif pred.dim() != 3:
            raise ValueError(f"pred must be class ids (B, H, W) or scores (B, C, H, W); got {tuple(pred.shape)}.")
        if labels.dim() != 3:
            raise ValueError(f"labels must be (B, H, W); got shape {tuple(labels.shape)}.")
        batch = intersect_and_union(pred, labels, self.num_classes, self.ignore_index)
        for key, area in zip(SEG_STATE_KEYS, batch):
            self.areas[key] = self.areas[key].to(area.device) + area

    def state(self) -> dict[str, Tensor]:
        """Copies of the four area tensors, to be SUM-reduced across processes."""
        return {key: value.clone() for key, value in self.areas.items()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Replace the state (e.g. by the all-reduced one)."""
        self.areas = {key: state[key].to(torch.int64).clone() for key in SEG_STATE_KEYS}

    def merge(self, state: dict[str, Tensor]) -> None:
        """Add another accumulator's ``state()`` to this one."""
        self.areas = {key: self.areas[key] + state[key].to(self.areas[key]) for key in SEG_STATE_KEYS}

    def compute(self) -> dict[str, float | list[float]]:
        """mIoU, aAcc, mAcc and per-class IoU / Acc, as fractions.

        IoU_c = I_c / U_c is NaN for a class absent from both prediction and label (U_c = 0); Acc_c = I_c / L_c
        is NaN for a class absent from the labels. mIoU and mAcc are means over the non-NaN classes (mmseg's
        ``np.nanmean``); aAcc = Σ I / Σ L.

        Raises:
            ValueError: if no labelled pixel was seen.
        """
        area = {key: value.double().cpu() for key, value in self.areas.items()}
        total_label = area["area_label"].sum()
        if total_label == 0:
            raise ValueError("Empty segmentation evaluation: no labelled (non-ignored) pixel was seen.")
        iou = area["area_intersect"] / area["area_union"]
        acc = area["area_intersect"] / area["area_label"]
        return {
            "mIoU": float(iou.nanmean()),
            "aAcc": float(area["area_intersect"].sum() / total_label),
            "mAcc": float(acc.nanmean()),
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }

"""Dense-prediction tasks: losses, metrics, evaluation crops and inference helpers (functions on tensors)."""

from predec.tasks.depth import (
    CROP_MASKS,
    DEPTH_METRIC_NAMES,
    SILOG_VARIANTS,
    DepthMetricAccumulator,
    depth_metrics,
    eigen_crop_mask,
    eigen_kitti_crop_mask,
    flip_average,
    garg_crop_mask,
    kb_crop,
    silog_loss,
    valid_depth_mask,
)
from predec.tasks.inference import (
    multiscale_flip_inference,
    scaled_size,
    slide_inference,
    sliding_windows,
    whole_inference,
)
from predec.tasks.segmentation import (
    IGNORE_INDEX,
    SEG_STATE_KEYS,
    SegMetricAccumulator,
    check_labels,
    cross_entropy_loss,
    intersect_and_union,
)

__all__ = [
    "CROP_MASKS",
    "DEPTH_METRIC_NAMES",
    "IGNORE_INDEX",
    "SEG_STATE_KEYS",
    "SILOG_VARIANTS",
    "DepthMetricAccumulator",
    "SegMetricAccumulator",
    "check_labels",
    "cross_entropy_loss",
    "depth_metrics",
    "eigen_crop_mask",
    "eigen_kitti_crop_mask",
    "flip_average",
    "garg_crop_mask",
    "intersect_and_union",
    "kb_crop",
    "multiscale_flip_inference",
    "scaled_size",
    "silog_loss",
    "slide_inference",
    "sliding_windows",
    "valid_depth_mask",
    "whole_inference",
]

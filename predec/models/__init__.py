"""Models: timm encoders, decoders, heads, the weight resolver and ``DenseModel``."""

from predec.models.base import DenseModel, create_model, from_pretrained, list_models
from predec.models.encoders import TimmBackbone
from predec.models.heads import DepthHead, SegmentationHead
from predec.models.weights import WeightSpec, WeightsReport, load_weights, read_state_dict

__all__ = [
    "DenseModel",
    "DepthHead",
    "SegmentationHead",
    "TimmBackbone",
    "WeightSpec",
    "WeightsReport",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_weights",
    "read_state_dict",
]

"""predec: dense prediction (segmentation, depth) with pre-trained decoders (×Net, DeCon)."""

__version__ = "0.1.0"

from predec.models.base import DenseModel, create_model, from_pretrained, list_models

__all__ = ["DenseModel", "__version__", "create_model", "from_pretrained", "list_models"]

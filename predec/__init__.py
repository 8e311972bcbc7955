"""predec: dense prediction (segmentation, depth) with pre-trained decoders (×Net, DeCon).

The model API (``DenseModel``, ``create_model``, ``from_pretrained``, ``list_models``) is imported on first
access (PEP 562), so ``import predec`` and light sub-packages such as :mod:`predec.config` do not pull in
timm, huggingface_hub or Lightning.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from predec.models.base import DenseModel, create_model, from_pretrained, list_models

# Public name -> module that defines it (imported when the name is first accessed).
_LAZY: dict[str, str] = {
    "DenseModel": "predec.models.base",
    "create_model": "predec.models.base",
    "from_pretrained": "predec.models.base",
    "list_models": "predec.models.base",
}

__all__ = ["DenseModel", "__version__", "create_model", "from_pretrained", "list_models"]


def __getattr__(name: str) -> _typing.Any:
    """Import a lazy public name on first access and cache it in the module namespace."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (``__all__``) and the sub-packages imported so far."""
    modules = {name for name, value in globals().items() if isinstance(value, type(_typing)) and name[0] != "_"}
    return sorted({*__all__, *modules})

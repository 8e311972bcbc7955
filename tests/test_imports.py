"""``import predec`` stays light: the model API is imported on first access (PEP 562)."""

import subprocess
import sys

import pytest

import predec

LAZY = ["DenseModel", "create_model", "from_pretrained", "list_models"]


def test_light_imports_do_not_pull_heavy_packages() -> None:
    """A fresh interpreter: predec and predec.config load without timm, Lightning, huggingface_hub or torch."""
    code = (
        "import sys, predec, predec.config, predec.cli\n"
        "heavy = [m for m in ('timm', 'lightning', 'huggingface_hub', 'torch') if m in sys.modules]\n"
        "assert not heavy, f'imported eagerly: {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_lazy_names_resolve_and_are_listed() -> None:
    """Each lazy name is the object defined in predec.models.base, listed by dir() and __all__."""
    from predec.models import base

    for name in LAZY:
        assert getattr(predec, name) is getattr(base, name)
        assert name in dir(predec)
        assert name in predec.__all__
    assert isinstance(predec.__version__, str)


def test_unknown_attribute_raises_attribute_error() -> None:
    """Names that are not lazy exports still raise AttributeError (hasattr/getattr defaults keep working)."""
    with pytest.raises(AttributeError, match="no_such_name"):
        predec.no_such_name  # noqa: B018


def test_the_package_namespace_shows_only_its_api():
    import predec

    names = set(dir(predec))
    assert {"DenseModel", "create_model", "from_pretrained", "list_models", "__version__"} <= names
    assert not names & {"Any", "TYPE_CHECKING", "importlib", "annotations", "typing"}

"""The model zoo: pre-trained weights that predec produces itself on its embedded data, shipped with the package.

- :mod:`predec.zoo.registry`: names → verified files (manifest, sha256), used by the weight resolver for
  ``encoder_weights="predec:<name>"``; standard library only.
- :mod:`predec.zoo.build`: rebuilds an entry from its recipe (``predec/configs/zoo/<name>.yaml``) with the
  pre-training engine and writes ``<name>.safetensors`` + ``<name>.json``.
- ``predec/zoo/weights/``: the shipped entries.

``predec zoo list`` shows the entries, ``predec zoo build NAME`` rebuilds one (see ``docs/zoo.md``).
"""

from __future__ import annotations

import fnmatch


def list_entries(pattern: str = "*") -> list[str]:
    """Names of the zoo entries available here (shipped with the package or in ``$PREDEC_ZOO_DIR``) matching the
    shell-style ``pattern``, e.g. ``list_entries("*decon*")``; use them as ``encoder_weights="predec:<name>"``.
    ``predec zoo list`` prints the same with each entry's method, architecture and metric."""
    from predec.zoo.registry import MANIFEST_SUFFIX, search_dirs

    names = {path.name[: -len(MANIFEST_SUFFIX)] for d in search_dirs() for path in d.glob(f"*{MANIFEST_SUFFIX}")}
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


list = list_entries  # ``predec.zoo.list()``, as ``timm.list_models()``: a name users look for

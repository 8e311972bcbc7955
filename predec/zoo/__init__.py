"""The model zoo: pre-trained weights that predec produces itself on its embedded data, shipped with the package.

- :mod:`predec.zoo.registry`: names → verified files (manifest, sha256), used by the weight resolver for
  ``encoder_weights="predec:<name>"``; standard library only.
- :mod:`predec.zoo.build`: rebuilds an entry from its recipe (``predec/configs/zoo/<name>.yaml``) with the
  pre-training engine and writes ``<name>.safetensors`` + ``<name>.json``.
- ``predec/zoo/weights/``: the shipped entries.

``predec zoo list`` shows the entries, ``predec zoo build NAME`` rebuilds one (see ``docs/zoo.md``).
"""

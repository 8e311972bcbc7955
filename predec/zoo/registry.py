"""Zoo entries by name: manifests, files and their sha256 check (standard library only).

An entry ``NAME`` is two files in a zoo directory: ``NAME.safetensors`` (the weights) and ``NAME.json`` (its
manifest: recipe, command, steps, metric and curve, wall time, machine, versions, sha256). Directories searched, in
order: ``$PREDEC_ZOO_DIR`` (if set; where ``predec zoo build --out DIR`` put rebuilt entries) and the package's
``predec/zoo/weights/``. Every entry can be rebuilt from its recipe ``predec/configs/zoo/NAME.yaml``.

A weight spec ``"predec:NAME"`` (``encoder_weights=``, ``decoder_weights=``) resolves through :func:`resolve`:
the first directory holding ``NAME.json`` is used, and its weights file must have the manifest's sha256.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

ZOO_PREFIX = "predec:"
"""Weight specs naming a zoo entry start with this (``"predec:synth-resnet18h-cls"``)."""
ZOO_DIR_ENV = "PREDEC_ZOO_DIR"
"""Environment variable: a zoo directory searched before the package's."""
WEIGHTS_SUFFIX = ".safetensors"
MANIFEST_SUFFIX = ".json"


class ZooError(ValueError):
    """A zoo entry is unknown, not built, missing its file, or its file does not match its manifest."""


def package_dir() -> Path:
    """The zoo directory shipped inside the package (``predec/zoo/weights``)."""
    return Path(str(resources.files("predec") / "zoo" / "weights"))


def recipes_dir() -> Path:
    """Where the entries' recipes live (``predec/configs/zoo``)."""
    return Path(str(resources.files("predec") / "configs" / "zoo"))


def search_dirs(extra: tuple[str | os.PathLike, ...] | list = ()) -> list[Path]:
    """Zoo directories in search order: ``extra``, ``$PREDEC_ZOO_DIR``, the package's."""
    dirs = [Path(d) for d in extra]
    env = os.environ.get(ZOO_DIR_ENV, "").strip()
    if env:
        dirs.append(Path(env))
    dirs.append(package_dir())
    return list(dict.fromkeys(dirs))


def recipe_names() -> list[str]:
    """Names of the entries predec can build (its recipes ``predec/configs/zoo/*.yaml``)."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def entry_names(dirs: list[Path] | None = None) -> list[str]:
    """Every entry name known here: recipes and manifests in the search directories."""
    names = set(recipe_names())
    for directory in dirs if dirs is not None else search_dirs():
        names.update(p.stem for p in directory.glob(f"*{MANIFEST_SUFFIX}"))
    return sorted(names)


def rebuild_hint(name: str) -> str:
    """How to get a good copy of entry ``name`` back."""
    return (
        f"Rebuild it with `predec zoo build {name} --out DIR` and set {ZOO_DIR_ENV}=DIR (or pass the rebuilt "
        f"DIR/{name}{WEIGHTS_SUFFIX} as the weight spec), or reinstall predec."
    )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ZooEntry:
    """One entry: its manifest and where it was found.

    Attributes:
        name: the entry name (``synth-resnet18h-cls``).
        directory: the zoo directory holding it.
        manifest: the content of ``NAME.json``.
    """

    name: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def file(self) -> Path:
        """The weights file."""
        return self.directory / str(self.manifest.get("file", f"{self.name}{WEIGHTS_SUFFIX}"))

    @property
    def manifest_path(self) -> Path:
        return self.directory / f"{self.name}{MANIFEST_SUFFIX}"

    @property
    def sha256(self) -> str:
        return str(self.manifest.get("sha256", ""))

    @property
    def model(self) -> dict[str, Any]:
        """The model settings the weights fit (``encoder``, ``encoder_kwargs``, ``arch``, ``decoder_kwargs``)."""
        return dict(self.manifest.get("model") or {})

    def fits(self) -> str:
        """One line naming the architecture the weights were trained for (for error messages)."""
        model = self.model
        parts = [f"encoder={model.get('encoder')!r}"]
        if model.get("encoder_kwargs"):
            parts.append(f"encoder_kwargs={model['encoder_kwargs']}")
        if model.get("arch"):
            parts.append(f"arch={model['arch']!r}")
        if model.get("decoder_kwargs"):
            parts.append(f"decoder_kwargs={model['decoder_kwargs']}")
        return f"zoo entry {self.name!r} was trained for " + ", ".join(parts) + f" ({self.manifest_path})"

    def verify(self) -> Path:
        """Check the weights file against the manifest; return its path.

        Raises:
            ZooError: the file is missing, or its size or sha256 differs from the manifest's (naming the file).
        """
        path = self.file
        if not path.is_file():
            raise ZooError(
                f"Zoo entry {self.name!r}: its weights file {path} is missing (manifest {self.manifest_path}). "
                + rebuild_hint(self.name)
            )
        expected_bytes = self.manifest.get("bytes")
        size = path.stat().st_size
        if expected_bytes is not None and size != int(expected_bytes):
            raise ZooError(
                f"Zoo entry {self.name!r}: {path} has {size} bytes, its manifest {self.manifest_path} records "
                f"{expected_bytes}: the file is truncated or was replaced. " + rebuild_hint(self.name)
            )
        actual = sha256_file(path)
        if actual != self.sha256:
            raise ZooError(
                f"Zoo entry {self.name!r}: {path} has sha256 {actual[:16]}…, its manifest {self.manifest_path} "
                f"records {self.sha256[:16]}…: the file is corrupt or was replaced. " + rebuild_hint(self.name)
            )
        return path


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ZooError(f"Zoo manifest {path} is unreadable ({err}). {rebuild_hint(path.stem)}") from err
    if not isinstance(manifest, dict) or not manifest.get("sha256"):
        raise ZooError(f"Zoo manifest {path} records no sha256: it is not a zoo manifest. {rebuild_hint(path.stem)}")
    return manifest


def find_entry(name: str, dirs: list[Path] | None = None) -> ZooEntry:
    """The entry ``name`` from the first search directory holding its manifest (not yet verified).

    Args:
        name: entry name, with or without the ``predec:`` prefix.
        dirs: directories to search (default :func:`search_dirs`).

    Raises:
        ZooError: unknown name (the known ones listed), or a recipe that has not been built anywhere searched.
    """
    name = name.removeprefix(ZOO_PREFIX)
    dirs = search_dirs() if dirs is None else dirs
    for directory in dirs:
        path = directory / f"{name}{MANIFEST_SUFFIX}"
        if path.is_file():
            return ZooEntry(name, directory, _read_manifest(path))
    searched = ", ".join(str(d) for d in dirs)
    if name in recipe_names():
        raise ZooError(
            f"Zoo entry {name!r} is not built in any zoo directory searched ({searched}). "
            f"Build it with `predec zoo build {name} --out DIR` and set {ZOO_DIR_ENV}=DIR."
        )
    known = entry_names(dirs)
    close = difflib.get_close_matches(name, known, n=2)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ZooError(f"Unknown zoo entry {name!r}.{hint} Entries: {', '.join(known) or 'none'} (predec zoo list).")


def resolve(name: str, dirs: list[Path] | None = None) -> Path:
    """The verified weights file of entry ``name`` (``predec:`` prefix optional).

    Raises:
        ZooError: unknown, not built, missing file or sha256 mismatch; the message names the file and how to rebuild.
    """
    return find_entry(name, dirs).verify()


__all__ = [
    "MANIFEST_SUFFIX",
    "WEIGHTS_SUFFIX",
    "ZOO_DIR_ENV",
    "ZOO_PREFIX",
    "ZooEntry",
    "ZooError",
    "entry_names",
    "find_entry",
    "package_dir",
    "rebuild_hint",
    "recipe_names",
    "resolve",
    "search_dirs",
    "sha256_file",
]

"""Checkpoints: atomic writes, RNG state for exact resume, and safe reading.

- :class:`AtomicCheckpointIO`: Lightning ``CheckpointIO`` writing ``torch.save`` output to a temporary file in the
  target directory, ``fsync``, then ``os.replace`` — a checkpoint file is either the old one or the complete new one.
  Reading is ``torch.load(weights_only=True)`` only.
- :class:`RNGStateCallback`: stores the torch / CUDA / NumPy / Python RNG states in every checkpoint (as tensors and
  plain values, so ``weights_only`` loading works) and restores them when training resumes, right before the first
  resumed step. Under DDP the states of rank 0 are stored and every rank restores them (ranks start from the same
  seed anyway).
- :func:`read_checkpoint`: a checkpoint file as a dict, with a clear error for a missing, foreign or corrupt file.
- Integrity: every write also writes ``<file>.sha256`` and keeps the file it replaces as ``<stem>.previous<suffix>``
  (with its checksum); :func:`newest_valid_checkpoint` picks the newest file whose checksum holds, warning when it
  falls back to the previous one.

Data order on resume is the job of the step-indexed sampler in :mod:`predec.engine.datamodule`; model, optimiser,
scheduler and loop counters are restored by Lightning from the same file.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from predec.atomic import atomic_path, atomic_write_text
from predec.engine.guards import name_list, nonfinite_tensors
from predec.zoo.registry import sha256_file

RNG_KEY = "predec_rng_states"


class CorruptCheckpointError(ValueError):
    """A checkpoint file whose content does not match its recorded sha256."""


def checksum_path(path: str | Path) -> Path:
    """The sidecar holding the sha256 of checkpoint ``path``: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def previous_checkpoint(path: str | Path) -> Path:
    """Where a write to ``path`` keeps the file it replaces: ``last.ckpt`` → ``last.previous.ckpt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def verify_checkpoint(path: str | Path) -> bool | None:
    """True if ``path`` matches its ``.sha256`` sidecar, False if it does not (or is missing), None if it has no
    sidecar (a checkpoint written before checksums, or by another tool: not verifiable)."""
    path, sidecar = Path(path), checksum_path(path)
    if not path.is_file():
        return False
    if not sidecar.is_file():
        return None
    recorded = recorded_checksum(path)
    return recorded is not None and sha256_file(path) == recorded  # an unreadable sidecar verifies nothing


def recorded_checksum(path: str | Path) -> str | None:
    """The sha256 that the sidecar of checkpoint ``path`` records; None if the sidecar is missing, empty or does
    not start with a sha256 (64 hexadecimal digits)."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return None
    words = sidecar.read_text(encoding="utf-8", errors="replace").split()
    digest = words[0].lower() if words else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def _replace_if_exists(source: Path, target: Path) -> None:
    if source.exists():
        os.replace(source, target)
    else:
        target.unlink(missing_ok=True)


def save_tensors(obj: Any, path: Path, shown: Path | None = None) -> None:
    """``torch.save(obj, path)``, its write failures raised as ``OSError`` naming ``shown`` (default ``path``; the
    file being written, when ``path`` is its temporary twin). torch's zip writer reports a full disk as
    ``RuntimeError: [enforce fail at inline_container.cc...] unexpected pos``."""
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        if "inline_container" not in str(err) and "PytorchStreamWriter" not in str(err):
            raise
        free = shutil.disk_usage(path.parent).free
        if free < 64 * 2**20:
            raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free)", str(shown or path)) from err
        raise OSError(errno.EIO, f"Writing the checkpoint failed ({err})", str(shown or path)) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with temp-file + rename writes, a sha256 sidecar, the replaced file kept as
    ``<stem>.previous<suffix>``, and ``weights_only=True`` reads that verify the checksum."""

    def __init__(self) -> None:
        super().__init__()
        self._written_steps: dict[Path, int] = {}  # path -> global step this process last wrote there

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically; the old ``path`` (and its checksum) becomes the previous one,
        unless it fails its checksum or is this process's own earlier write of the same step (then it is replaced, so
        the previous file stays a checkpoint of an earlier step).

        Order of the renames: a crash at any point leaves either the new file with its checksum, or no ``path`` and
        the previous file with its own (a file whose sidecar is missing is accepted unverified, never a mismatch).
        """
        path = Path(path)
        step = checkpoint.get("global_step")
        with atomic_path(path) as tmp:
            save_tensors(checkpoint, tmp, path)
            digest = sha256_file(tmp)
            previous = previous_checkpoint(path)
            rewrite = step is not None and self._written_steps.get(path.resolve()) == step
            if path.exists() and not rewrite and verify_checkpoint(path) is not False:  # a corrupt file is not kept
                _replace_if_exists(checksum_path(path), checksum_path(previous))
                os.replace(path, previous)
            atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n")
        if step is not None:
            self._written_steps[path.resolve()] = step

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Read a checkpoint with ``torch.load(weights_only=True)``."""
        return read_checkpoint(path, map_location=map_location or "cpu")


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` writing ``last.ckpt`` every N steps, and once more after a validation of a step
    it has just written: Lightning writes step checkpoints before that step's validation and skips the write after
    it, so a run resumed from such a checkpoint would lose the validation (its metrics, the best-weights and
    early-stopping state)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        written_before = self._last_global_step_saved == trainer.global_step
        super().on_validation_end(trainer, pl_module)
        if written_before and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely (``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptCheckpointError: the file does not match its ``.sha256`` sidecar.
        ValueError: the file is not a torch checkpoint holding a dict (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} not found.")
    if checksum_path(path).is_file() and recorded_checksum(path) is None:
        raise CorruptCheckpointError(
            f"Checkpoint {str(path)!r} cannot be verified: its checksum file {str(checksum_path(path))!r} is empty "
            "or unreadable (no sha256 in it). If you trust the checkpoint, delete that file (it is then loaded "
            f"unverified, if its tensors are finite); else resume from {str(previous_checkpoint(path))!r}."
        )
    verified = verify_checkpoint(path)
    if verified is False:
        raise CorruptCheckpointError(
            f"Checkpoint {str(path)!r} is corrupt: its sha256 {sha256_file(path)[:12]}… does not match "
            f"{str(checksum_path(path))!r}. Resume from {str(previous_checkpoint(path))!r} (the one before) if it "
            "exists, or start the run again."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(
            f"Cannot read checkpoint {str(path)!r} with torch.load(weights_only=True): {err}. "
            "Expected a predec/Lightning .ckpt file."
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    if verified is None:  # no sidecar (another tool's file, or the sidecar was lost): at least every tensor finite
        state = checkpoint.get("state_dict")
        bad = nonfinite_tensors(state if isinstance(state, dict) else {})
        if bad:
            raise CorruptCheckpointError(
                f"Checkpoint {str(path)!r} has no {checksum_path(path).name} to verify it and holds non-finite "
                f"tensors ({name_list(bad)}): refused."
            )
        warnings.warn(
            f"Checkpoint {str(path)!r} has no {checksum_path(path).name} sidecar: loaded unverified (it reads and its "
            "tensors are finite).",
            stacklevel=2,
        )
    return checkpoint


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), NumPy and Python, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the states written by :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"].cpu())
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["state"]), python_state["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


class RNGStateCallback(L.Callback):
    """Save the RNG states in each checkpoint; restore them when a resumed fit starts its first step."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = collect_rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(RNG_KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


def newest_valid_checkpoint(path: str | Path) -> Path | None:
    """``path`` if it holds a valid checkpoint, else the one it replaced (with a warning naming both), else None if
    neither exists.

    Valid: its checksum matches, or it has no checksum sidecar (unverifiable, accepted).

    Raises:
        CorruptCheckpointError: neither ``path`` nor the previous checkpoint is valid, and one of them exists.
    """
    path = Path(path)
    previous = previous_checkpoint(path)
    if path.is_file() and verify_checkpoint(path) is not False:
        return path
    if previous.is_file() and verify_checkpoint(previous) is not False:
        problem = "fails its sha256 check" if path.is_file() else "is missing"
        warnings.warn(
            f"Checkpoint {str(path)!r} {problem}; resuming from the previous one, {str(previous)!r}.", stacklevel=2
        )
        return previous
    if path.is_file() or previous.is_file():
        raise CorruptCheckpointError(
            f"Checkpoint {str(path)!r} and the previous one {str(previous)!r} are missing or fail their sha256 "
            "checks (<file>.sha256): nothing valid to resume; start the run again (--overwrite)."
        )
    return None

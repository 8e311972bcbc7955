"""Checkpoints: atomic writes, RNG state for exact resume, and safe reading.

- :class:`AtomicCheckpointIO`: Lightning ``CheckpointIO`` writing ``torch.save`` output to a temporary file in the
  target directory, ``fsync``, then ``os.replace`` — a checkpoint file is either the old one or the complete new one.
  Reading is ``torch.load(weights_only=True)`` only.
- :class:`RNGStateCallback`: stores the torch / CUDA / NumPy / Python RNG states in every checkpoint (as tensors and
  plain values, so ``weights_only`` loading works) and restores them when training resumes, right before the first
  resumed step. Under DDP the states of rank 0 are stored and every rank restores them (ranks start from the same
  seed anyway).
- :func:`read_checkpoint`: a checkpoint file as a dict, with a clear error for a missing or foreign file.

Data order on resume is the job of the step-indexed sampler in :mod:`predec.engine.datamodule`; model, optimiser,
scheduler and loop counters are restored by Lightning from the same file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

RNG_KEY = "predec_rng_states"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with temp-file + rename writes and ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Read a checkpoint with ``torch.load(weights_only=True)``."""
        return read_checkpoint(path, map_location=map_location or "cpu")


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely (``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a torch checkpoint holding a dict (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} not found.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(
            f"Cannot read checkpoint {str(path)!r} with torch.load(weights_only=True): {err}. "
            "Expected a predec/Lightning .ckpt file."
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
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

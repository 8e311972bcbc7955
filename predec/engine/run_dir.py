"""One directory per run: the resolved config, checkpoints, metrics and logs.

Layout::

    <run>/
      config.yaml          the resolved config (every field)
      .lock                held (flock) by the process running the run: a second start is refused
      status.json          {"state": "running" | "finished" | "failed", "step": ..., "message": ...}
      metrics.json         final evaluation metrics
      checkpoints/last.ckpt  the newest checkpoint (+ last.ckpt.sha256; the one before: last.previous.ckpt)
      snapshots/step<N>.ckpt weights of every N-th step (``trainer.snapshot_every_n_steps``), kept after the run
      logs/                tensorboard/ events, csv/metrics.csv (csv/resumed_step<N>/metrics.csv after a resume)
      model/               the trained model as save_pretrained writes it (config.json + model.safetensors)

Files are written atomically (temp file + rename), so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from predec.atomic import atomic_write_text
from predec.config import ConfigError, diff_configs, load_config, save_config, to_dict

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against concurrent starts there
    fcntl = None  # type: ignore[assignment]

RUNNING, FINISHED, FAILED = "running", "finished", "failed"
_HELD_LOCKS: dict[str, Any] = {}  # run directory (resolved) -> open lock file, for the locks this process holds


class RunLockedError(FileExistsError):
    """Another live process is running in the run directory."""


STATUS_RESERVED_BYTES = 4096
"""Size ``status.json`` is padded to (one file-system block): room to mark the run failed on a full disk."""


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (NaN is written as ``NaN``, which Python's json reads back)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class RunDir:
    """Paths and small state files of one run directory.

    Args:
        root: the run directory (created on demand).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def lock(self) -> None:
        """Take the run directory for this process (an exclusive ``flock`` on ``.lock``, re-entrant in-process).

        The kernel drops the lock when its process ends, so the lock of a killed run is taken over silently.

        Raises:
            RunLockedError: another live process holds it (the message names its pid and host).
        """
        key = str(self.root.resolve())
        if fcntl is None or key in _HELD_LOCKS:
            return
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(
                f"The run directory {str(self.root)!r} is a file: give --run-dir (or output_dir/name) a folder."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the run lives
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that did not say"
            handle.close()
            raise RunLockedError(
                f"Run directory {self.root} is in use by another process ({holder}). Wait for it to end or stop "
                "it, or start this run in another directory (--run-dir, or name=...)."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        handle.flush()
        _HELD_LOCKS[key] = handle

    def unlock(self) -> None:
        """Release this process's lock on the run directory (no-op if it holds none)."""
        handle = _HELD_LOCKS.pop(str(self.root.resolve()), None)
        if handle is not None:
            handle.close()

    def create(self) -> RunDir:
        """Create the directory tree."""
        for path in (self.root, self.checkpoints, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def clear(self) -> None:
        """Delete what a previous run left (checkpoints, logs, metrics, model, status); the config is rewritten."""
        for path in (self.checkpoints, self.logs, self.model_dir):
            if path.is_dir():
                shutil.rmtree(path)
        for path in (self.metrics_path, self.status_path):
            path.unlink(missing_ok=True)

    def save_config(self, config: Any) -> Path:
        """Write the resolved config as ``config.yaml`` (the directory is created; its ``checkpoints/`` and ``logs/``
        only by a training run, so an evaluation's directory holds no empty folders)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return save_config(config, self.config_path)

    def load_config(self, schema: type) -> Any:
        """Read ``config.yaml`` back into ``schema``."""
        return load_config(self.config_path, schema=schema)

    def status(self) -> dict[str, Any]:
        """The content of ``status.json`` (``{}`` for a run that never started)."""
        if not self.status_path.is_file():
            return {}
        return json.loads(self.status_path.read_text(encoding="utf-8"))

    def set_status(self, state: str, **fields: Any) -> None:
        """Record the run's state (``running``, ``finished``, ``failed``, ``interrupted``) with extra fields and a
        timestamp; any state but ``running`` ends the run and releases its lock.

        The file is padded with spaces to :data:`STATUS_RESERVED_BYTES`, so that on a full disk (the atomic write
        fails) the state is rewritten in place over the bytes the file already holds, its message shortened to fit:
        a run that stopped because the disk filled up is still marked ``failed``.
        """
        record = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
        text = json.dumps(record, indent=2) + "\n"
        try:
            atomic_write_text(self.status_path, text.ljust(STATUS_RESERVED_BYTES))
        except OSError:
            if not self._rewrite_status_in_place(record):
                raise
        if state != RUNNING:
            self.unlock()

    def _rewrite_status_in_place(self, record: dict[str, Any]) -> bool:
        """Overwrite ``status.json`` in place with ``record`` (message shortened to the file's size); False if the
        file is missing or cannot be written either."""

        def encoded(message: str | None) -> bytes:
            return json.dumps(record if message is None else {**record, "message": message}).encode() + b"\n"

        message = None if "message" not in record else str(record["message"])
        data = encoded(message)
        while len(data) > STATUS_RESERVED_BYTES and message:
            keep = max(0, len(message) - (len(data) - STATUS_RESERVED_BYTES) - 3)
            message = message[:keep] + "..." if keep else ""
            data = encoded(message)
        try:
            with open(self.status_path, "r+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                if len(data) > size:
                    return False
                handle.write(data.ljust(size))
                handle.flush()
                os.fsync(handle.fileno())
            return True
        except OSError:
            return False

    @property
    def is_finished(self) -> bool:
        return self.status().get("state") == FINISHED

    def check_same_config(self, config: Any, ignore: tuple[str, ...] = ()) -> None:
        """Raise if ``config.yaml`` exists and differs from ``config`` in a key other than ``ignore`` (dotted).

        Raises:
            ConfigError: listing the differing keys with both values.
        """
        if not self.config_path.is_file():
            return
        saved = to_dict(self.load_config(type(config)))
        wanted = to_dict(config)
        keys = [k for k in diff_configs(saved, wanted) if not any(k == i or k.startswith(f"{i}.") for i in ignore)]
        if keys:
            details = "; ".join(f"{k}: {_get(saved, k)!r} in the run, {_get(wanted, k)!r} now" for k in keys[:8])
            raise ConfigError(
                f"Run directory {self.root} holds a run with another config ({details}). Resume it with the same "
                "recipe and overrides, or start a new run with another name= / --run-dir."
            )

    def write_metrics(self, metrics: dict[str, Any], path: str | Path | None = None) -> Path:
        """Write the metrics dict as JSON (default: ``metrics.json``)."""
        return write_json(path or self.metrics_path, metrics)


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_csv_metric(path: str | Path, column: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``column`` in a Lightning CSV log (rows without a value skipped)."""
    steps, values = [], []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            value = row.get(column)
            if value not in (None, "") and row.get("step") not in (None, ""):
                steps.append(int(float(row["step"])))
                values.append(float(value))
    return steps, values

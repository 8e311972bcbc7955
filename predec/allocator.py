"""The memory allocator of predec's processes: a caching allocator preloaded by the CLI, glibc tuned as a fallback.

A training step frees and re-allocates the same few hundred activation buffers (1-100 MiB each) every step. glibc's
malloc either serves them from a heap that fragments (the resident memory creeps up step after step) or, with a low
mmap threshold, maps fresh pages for each one (flat memory, but millions of page faults: a third of a DeCon-ML step
in kernel time, ``docs/benchmarks.md``). A caching allocator (jemalloc, tcmalloc, mimalloc) reuses the freed pages:
flat memory without the faults. Intel's PyTorch CPU tuning guide recommends the same.

``predec`` therefore re-executes itself once at start with the allocator in ``LD_PRELOAD``
(:func:`reexec_with_allocator`, called by the console script before torch is imported). ``PREDEC_ALLOCATOR``
chooses: ``auto`` (default: the first of :data:`AUTO_ORDER` found), ``jemalloc``, ``tcmalloc``, ``mimalloc``, or
``glibc`` (no preload). Where the chosen library is missing (a machine without it, macOS, Windows) the process keeps
glibc and :func:`tune_glibc` pins its mmap threshold, as predec did before (flat memory, faults included). Libraries
are looked for where Debian's ``libtcmalloc-minimal4`` / ``libjemalloc2`` install theirs (``apt-get install``; the
fastest here, ``docs/benchmarks.md``) and where pip puts ``cmeel-mimalloc`` (``pip install cmeel-mimalloc``: the
one caching allocator on PyPI, faster than glibc but with a higher peak, so not a dependency). ``status.json`` of
every run records the allocator it ran with.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

ALLOCATOR_ENV = "PREDEC_ALLOCATOR"
REEXEC_ENV = "PREDEC_ALLOCATOR_REEXEC"  # set in the re-executed process: never re-execute twice
ALLOCATORS: tuple[str, ...] = ("jemalloc", "tcmalloc", "mimalloc", "glibc")
AUTO_ORDER: tuple[str, ...] = ("tcmalloc", "jemalloc", "mimalloc")
"""The order ``auto`` tries (the fastest first, as measured in ``docs/benchmarks.md``)."""

LIBRARY_NAMES: dict[str, tuple[str, ...]] = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "mimalloc": ("libmimalloc.so.3", "libmimalloc.so.2", "libmimalloc.so"),
}
SYSTEM_LIBRARY_DIRS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
MMAP_THRESHOLD_BYTES = 1 << 20
ALLOCATOR_SETTINGS: dict[str, dict[str, str]] = {
    # Keep freed pages for reuse instead of returning them to the OS after a few seconds (a training step is longer
    # than the default decay, so every step would fault its pages in again). PyTorch's CPU performance guide sets
    # the same jemalloc options, with decay times of months instead of -1 (never).
    "jemalloc": {
        "MALLOC_CONF": "oversize_threshold:1,background_thread:true,metadata_thp:auto,"
        "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    },
    "mimalloc": {"MIMALLOC_PURGE_DELAY": "-1"},
    # tcmalloc returns freed spans to the OS gradually (release rate 1 by default), and re-faulting them cost a DeCon-ML
    # step 1.0 s of kernel time (5 %); with 0 it keeps them, as the others, at the same peak (docs/benchmarks.md).
    "tcmalloc": {"TCMALLOC_RELEASE_RATE": "0"},
}
"""Environment settings each allocator runs with (a value the user set already wins)."""


def library_dirs() -> list[Path]:
    """Where allocator libraries are looked for: the Python environment's ``cmeel.prefix/lib`` (pip's
    ``cmeel-mimalloc``), ``LD_LIBRARY_PATH``, then the system library directories."""
    env_dirs = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    python_dirs = {Path(sysconfig.get_paths()[key]) / "cmeel.prefix" / "lib" for key in ("purelib", "platlib")}
    return [*sorted(python_dirs), *env_dirs, *(Path(p) for p in SYSTEM_LIBRARY_DIRS)]


def find_allocator(name: str) -> Path | None:
    """The shared library of allocator ``name`` on this machine, or None."""
    for directory in library_dirs():
        for filename in LIBRARY_NAMES.get(name, ()):
            path = directory / filename
            if path.is_file():
                return path
    return None


def active_allocator() -> str:
    """The allocator of this process: the caching allocator mapped into it, else ``glibc``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    for name, filenames in LIBRARY_NAMES.items():
        if any(f"/{filename.split('.so')[0]}.so" in maps for filename in filenames):
            return name
    return "glibc"


def chosen_allocator(environ: Mapping[str, str] = os.environ) -> str:
    """``PREDEC_ALLOCATOR`` (default ``auto``), checked.

    Raises:
        ValueError: a value that is not ``auto`` or one of :data:`ALLOCATORS`.
    """
    choice = environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if choice != "auto" and choice not in ALLOCATORS:
        raise ValueError(f"{ALLOCATOR_ENV}={choice!r}: expected auto, {', '.join(ALLOCATORS)}.")
    return choice


def preload_env(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The environment that re-executes this process under the chosen caching allocator, or None when there is
    nothing to do: ``glibc`` chosen, already re-executed, not Linux, or the library missing (a warning names it)."""
    choice = chosen_allocator(environ)
    if choice == "glibc" or environ.get(REEXEC_ENV) or not sys.platform.startswith("linux"):
        return None
    for name in AUTO_ORDER if choice == "auto" else (choice,):
        library = find_allocator(name)
        if library is not None:
            preload = [p for p in environ.get("LD_PRELOAD", "").split() if p]
            settings = ALLOCATOR_SETTINGS.get(name, {})
            return {**settings, **environ, "LD_PRELOAD": " ".join([str(library), *preload]), REEXEC_ENV: name}
        if choice != "auto":
            logger.warning(
                f"{ALLOCATOR_ENV}={choice}: no {' or '.join(LIBRARY_NAMES[name])} in "
                f"{', '.join(map(str, library_dirs()))}; running with glibc's malloc (install {name}, e.g. "
                "`apt-get install libjemalloc2` / `libtcmalloc-minimal4`, or `pip install cmeel-mimalloc`)."
            )
    return None


def reexec_with_allocator(argv: Sequence[str], program: Sequence[str] = ("-m", "predec.cli")) -> None:
    """Replace this process by ``python PROGRAM ARGV`` (default: ``python -m predec.cli ARGV``) under the chosen
    caching allocator (no return), if :func:`preload_env` says so; otherwise return and let it run here. Call it
    before the process has done any work (a script: first thing in ``main``)."""
    env = preload_env()
    if env is None or active_allocator() != "glibc":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *program, *argv], env)


def tune_glibc(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Under glibc's malloc, pin its mmap threshold so that freed temporaries above ``threshold`` bytes go back to
    the OS (flat memory instead of a heap that creeps up, at the price of page faults). A no-op under a caching
    allocator, outside Linux, or where ``MALLOC_MMAP_THRESHOLD_`` is set (the user's choice).

    Returns:
        Whether the threshold was set.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ or active_allocator() != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(libc.mallopt(m_mmap_threshold, int(threshold)))

"""The caching allocator: the console script re-executes itself under it, with a fallback when it is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from predec import allocator
from predec.allocator import ALLOCATOR_ENV, REEXEC_ENV, active_allocator, find_allocator, preload_env

AVAILABLE = [name for name in allocator.AUTO_ORDER if find_allocator(name) is not None]
TRAIN = [
    "train",
    "--config",
    "dense/synth_seg_fpn",
    "model.encoder=test_resnet",
    "model.decoder_kwargs={channels: 8}",
    "data.num_train=4",
    "data.num_val=2",
    "data.image_size=[32, 32]",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "trainer.max_steps=2",
    "schedule.warmup_steps=1",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
]


def run_cli(tmp_path, choice: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", REEXEC_ENV)}
    env[ALLOCATOR_ENV] = choice
    run_dir = tmp_path / choice
    result = subprocess.run(
        [sys.executable, "-m", "predec.cli", *TRAIN, "--run-dir", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.skipif(not AVAILABLE or not sys.platform.startswith("linux"), reason="no caching allocator here")
def test_the_cli_runs_under_the_caching_allocator_and_records_it(tmp_path):
    assert run_cli(tmp_path, AVAILABLE[0])["allocator"] == AVAILABLE[0]
    assert run_cli(tmp_path, "glibc")["allocator"] == "glibc"


def test_a_missing_library_falls_back_to_glibc_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(allocator, "find_allocator", lambda name: None)
    assert preload_env({ALLOCATOR_ENV: "jemalloc"}) is None
    assert "no libjemalloc.so.2" in caplog.text and "glibc" in caplog.text
    assert preload_env({ALLOCATOR_ENV: "auto"}) is None  # auto: silently glibc


def test_preload_env_is_set_once_and_keeps_the_users_preload(monkeypatch, tmp_path):
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    monkeypatch.setattr(allocator, "library_dirs", lambda: [tmp_path])
    monkeypatch.setattr(sys, "platform", "linux")
    env = preload_env({ALLOCATOR_ENV: "auto", "LD_PRELOAD": "/opt/libother.so"})
    assert env is not None
    assert env["LD_PRELOAD"] == f"{library} /opt/libother.so"
    assert env[REEXEC_ENV] == "jemalloc"
    assert preload_env(env) is None  # the re-executed process does not re-execute again
    assert preload_env({ALLOCATOR_ENV: "glibc"}) is None


def test_a_bad_choice_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"PREDEC_ALLOCATOR='jemaloc': expected auto, jemalloc, tcmalloc"):
        preload_env({ALLOCATOR_ENV: "jemaloc"})


def test_this_test_process_is_not_re_executed():
    """``main(argv)`` (a list: tests, notebooks) runs in the calling process; only the console script re-executes."""
    assert active_allocator() in ("glibc", *allocator.AUTO_ORDER)


def test_the_allocators_settings_are_applied_and_the_users_win(monkeypatch, tmp_path):
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    monkeypatch.setattr(allocator, "library_dirs", lambda: [tmp_path])
    monkeypatch.setattr(sys, "platform", "linux")
    env = preload_env({ALLOCATOR_ENV: "jemalloc"})
    assert env is not None and "dirty_decay_ms:-1" in env["MALLOC_CONF"]
    env = preload_env({ALLOCATOR_ENV: "jemalloc", "MALLOC_CONF": "narenas:1"})
    assert env is not None and env["MALLOC_CONF"] == "narenas:1"
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    env = preload_env({ALLOCATOR_ENV: "tcmalloc"})
    assert env is not None and env["TCMALLOC_RELEASE_RATE"] == "0"
    env = preload_env({ALLOCATOR_ENV: "tcmalloc", "TCMALLOC_RELEASE_RATE": "2"})
    assert env is not None and env["TCMALLOC_RELEASE_RATE"] == "2"

"""Checkpoints and resume: an interrupted run resumed ends with the uninterrupted run's weights; NaN/Inf guards;
atomic writes; deterministic step-indexed sampling."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from predec.cli import main
from predec.config import ConfigError, load_config
from predec.engine import NonFiniteLossError, RunExistsError, train_dense
from predec.engine.checkpoint import (
    AtomicCheckpointIO,
    CorruptCheckpointError,
    collect_rng_states,
    read_checkpoint,
    set_rng_states,
)
from predec.engine.datamodule import StepBatchSampler
from predec.engine.dense_checkpoint import load_dense_checkpoint
from predec.engine.run_dir import RunDir, RunLockedError

STEPS = 12
# Stochastic depth in the encoder makes the result depend on the torch RNG, random crops/flips/colour jitter on the
# per-sample augmentation seeds: both must be restored for an exact resume.
OVERRIDES = [
    "model.encoder=test_resnet",
    "model.encoder_kwargs={drop_path_rate: 0.3}",
    "data.num_train=10",
    "data.num_val=2",
    "data.image_size=[32, 32]",
    "data.crop_size=[32, 32]",
    "data.batch_size=4",
    f"trainer.max_steps={STEPS}",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.val_every_n_steps=6",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "schedule.warmup_steps=2",
    "trainer.deterministic=true",
]


def config(**extra: str):
    return load_config("dense/synth_seg_fpn", [*OVERRIDES, *(f"{k}={v}" for k, v in extra.items())])


class CrashAt(L.Callback):
    """Simulate a killed process: raise once the optimiser has done ``step`` steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


class PoisonWeightsAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class PoisonGradientAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            pl_module.model.head.conv.weight.grad.fill_(float("inf"))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    reference = train_dense(config(), tmp_path / "reference")
    assert reference.step == STEPS

    interrupted = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash after step 7"):
        train_dense(config(), interrupted, callbacks=[CrashAt(7)])
    assert read_checkpoint(interrupted / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert json.loads((interrupted / "status.json").read_text())["state"] == "failed"

    # Automatic resume refuses a changed recipe ...
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.001 in the run, 0\.002 now"):
        train_dense(config(**{"optim.lr": "2e-3"}), interrupted)
    # ... releasing the run directory's lock (another process can start there now) ...
    taker = subprocess.run([sys.executable, "-c", TAKE_LOCK, str(interrupted)], capture_output=True, text=True)
    assert taker.stdout.strip() == "locked", taker.stderr
    # ... and resumes the same one (through the CLI, from step 4: steps 5-7 are replayed).
    assert main(["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(interrupted), *OVERRIDES]) == 0

    resumed = load_dense_checkpoint(interrupted / "checkpoints" / "last.ckpt")
    expected = load_dense_checkpoint(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert resumed.step == expected.step == STEPS
    assert resumed.state_dict.keys() == expected.state_dict.keys()
    for key, value in expected.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
    metrics = json.loads((interrupted / "metrics.json").read_text())["metrics"]
    assert metrics == reference.metrics["metrics"]
    assert (interrupted / "logs" / "csv" / "resumed_step4" / "metrics.csv").is_file()

    with pytest.raises(RunExistsError, match="finished run"):
        train_dense(config(), interrupted)


def assert_same_weights(run_dir, reference_dir) -> None:
    resumed = load_dense_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    expected = load_dense_checkpoint(reference_dir / "checkpoints" / "last.ckpt")
    assert resumed.step == expected.step == STEPS
    for key, value in expected.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key


def test_moved_run_directory_resumes_into_last_ckpt(tmp_path):
    """Resume depends on the run directory's content, not its path: no last-v1.ckpt beside a stale last.ckpt."""
    train_dense(config(), tmp_path / "reference")
    with pytest.raises(RuntimeError, match="simulated crash after step 7"):
        train_dense(config(), tmp_path / "cluster_a" / "run", callbacks=[CrashAt(7)])
    shutil.move(tmp_path / "cluster_a" / "run", tmp_path / "run_moved")
    train_dense(config(), tmp_path / "run_moved")
    checkpoints = tmp_path / "run_moved" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last.ckpt",
        "last.ckpt.sha256",
        "last.previous.ckpt",
        "last.previous.ckpt.sha256",
    ]
    assert_same_weights(tmp_path / "run_moved", tmp_path / "reference")


def test_flipped_byte_in_last_ckpt_falls_back_to_the_previous_one(tmp_path):
    """A checkpoint that fails its sha256 is refused naming it; resume takes the one before, with a warning."""
    train_dense(config(), tmp_path / "reference")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash after step 11"):
        train_dense(config(), run, callbacks=[CrashAt(11)])
    last, previous = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.previous.ckpt"
    assert read_checkpoint(last)["global_step"] == 8 and read_checkpoint(previous)["global_step"] == 4
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    last.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"last\.ckpt' is corrupt: its sha256 .* does not match"):
        read_checkpoint(last)
    with pytest.warns(UserWarning, match=r"last\.ckpt' fails its sha256 check; resuming from .*last\.previous\.ckpt"):
        train_dense(config(), run)
    assert read_checkpoint(previous)["global_step"] == 8  # the step-8 checkpoint written again after the resume
    assert_same_weights(run, tmp_path / "reference")

    # Both corrupt: refused, naming both.
    previous.write_bytes(previous.read_bytes()[:-10])
    last.write_bytes(b"garbage")
    (run / "status.json").write_text('{"state": "running"}')
    with pytest.raises(CorruptCheckpointError, match=r"last\.ckpt' and the previous one .*last\.previous\.ckpt"):
        train_dense(config(), run)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss at step 5 \(ce=nan\)"):
        train_dense(config(), tmp_path, callbacks=[PoisonWeightsAt(5)])
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and "step 5" in status["message"]


class PoisonRunningVarAfter(L.Callback):
    """A loss can stay finite while a huge lr overflows BatchNorm statistics: inf in a running variance."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            bn = next(m for m in pl_module.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))


def test_non_finite_weights_are_never_written_as_a_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"Non-finite weights at step 8: model\.encoder\..*running_var"):
        train_dense(config(), tmp_path, callbacks=[PoisonRunningVarAfter(8)])
    written = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert written == ["last.ckpt"]  # step 4's; step 8's was refused, so nothing was rotated into last.previous
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and "step 8" in status["message"]


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"Non-finite gradient at step 2: model\.head\.conv\.weight"):
        train_dense(config(), tmp_path, callbacks=[PoisonGradientAt(2)])


def test_explicit_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_dense(config(), tmp_path, resume=True)


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "bad": Unpicklable()}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


def test_checkpoint_writes_keep_the_previous_valid_one(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    for step in (1, 2):
        io.save_checkpoint({"global_step": step}, path)
    previous = tmp_path / "last.previous.ckpt"
    assert io.load_checkpoint(previous)["global_step"] == 1 and io.load_checkpoint(path)["global_step"] == 2
    path.write_bytes(path.read_bytes()[:-1])  # a torn step-2 file is replaced, never kept as the fallback
    io.save_checkpoint({"global_step": 3}, path)
    assert io.load_checkpoint(previous)["global_step"] == 1 and io.load_checkpoint(path)["global_step"] == 3


@pytest.mark.parametrize("content", ["", "\n", "not-a-checksum  last.ckpt\n", "\x00\xff"])
def test_an_empty_or_garbage_checksum_sidecar_is_unverifiable_not_a_crash(tmp_path, content):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    (tmp_path / "last.ckpt.sha256").write_text(content)
    with pytest.raises(CorruptCheckpointError, match=r"last\.ckpt' cannot be verified: its checksum file .* is empty"):
        read_checkpoint(path)


def test_a_full_disk_during_torch_save_is_an_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as a RuntimeError ('unexpected pos'); predec raises ENOSPC."""
    import errno
    from collections import namedtuple

    import predec.engine.checkpoint as checkpoint_module

    def full(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 484352 vs 484248")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 512, 512))
    with pytest.raises(OSError, match="No space left on device") as info:
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_without_its_sidecar_loads_only_if_finite_and_with_a_warning(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(2)}}, path)
    (tmp_path / "last.ckpt.sha256").unlink()
    with pytest.warns(UserWarning, match=r"no last\.ckpt\.sha256 sidecar: loaded unverified"):
        assert read_checkpoint(path)["global_step"] == 1
    torch.save({"global_step": 2, "state_dict": {"w": torch.tensor([1.0, float("nan")])}}, path)
    with pytest.raises(CorruptCheckpointError, match=r"no last\.ckpt\.sha256 to verify it and holds non-finite"):
        read_checkpoint(path)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    states = collect_rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    AtomicCheckpointIO().save_checkpoint({"rng": states}, tmp_path / "c.ckpt")
    set_rng_states(read_checkpoint(tmp_path / "c.ckpt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_step_sampler_resumes_and_shards_deterministically():
    full = list(StepBatchSampler(10, batch_size=3, seed=7, total_batches=9))
    assert len(full) == 9 and all(len(b) == 3 for b in full)
    assert list(StepBatchSampler(10, batch_size=3, seed=7, total_batches=9, start_batch=5)) == full[5:]
    # Every pass over the data is a permutation.
    stream = [index for batch in full for index, _ in batch]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    # Two ranks of batch 3 see exactly the global batches of one rank of batch 6.
    single = list(StepBatchSampler(10, batch_size=6, seed=7, total_batches=4))
    ranks = [list(StepBatchSampler(10, 3, 7, 4, rank=r, world_size=2)) for r in (0, 1)]
    for step in range(4):
        assert ranks[0][step] + ranks[1][step] == single[step]
    assert full != list(StepBatchSampler(10, batch_size=3, seed=8, total_batches=9))


def test_a_second_start_on_a_live_run_directory_is_refused(tmp_path):
    """The run directory's lock names the live process holding it; a killed holder's lock is taken over."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"{run} is in use by another process \(pid {holder.pid} on "):
            train_dense(config(), run)
        code = main(["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(run), *OVERRIDES])
        assert code == 2
    finally:
        holder.kill()
        holder.wait()
    assert train_dense(config(**{"trainer.max_steps": "3"}), run).step == 3  # the killed holder's lock is stale
    assert (run / ".lock").is_file()
    RunDir(run).lock()  # released at the end of the run: this process can take it again
    RunDir(run).unlock()


TAKE_LOCK = """
import sys
from predec.engine.run_dir import RunDir
RunDir(sys.argv[1]).lock()
print("locked", flush=True)
"""

HOLD_LOCK = """
import sys, time
from predec.engine.run_dir import RunDir
RunDir(sys.argv[1]).lock()
print("locked", flush=True)
time.sleep(600)
"""


def test_full_disk_ends_the_run_with_one_line_exit_2_and_status_failed(tmp_path, monkeypatch, capsys):
    """The disk fills up at the step-8 checkpoint: every later write fails too (ENOSPC), yet the run is marked
    ``failed`` (in place, in the bytes status.json reserved) and the CLI prints one line, exit 2."""
    import errno

    import predec.engine.run_dir as run_dir_module

    full = {"now": False}
    save, write = AtomicCheckpointIO.save_checkpoint, run_dir_module.atomic_write_text

    def save_until_full(self, checkpoint, path, storage_options=None):
        if full["now"] or checkpoint.get("global_step", 0) >= 8:
            full["now"] = True
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(self, checkpoint, path, storage_options)

    def write_until_full(path, text):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(path, text)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_until_full)
    monkeypatch.setattr(run_dir_module, "atomic_write_text", write_until_full)
    run = tmp_path / "run"
    code = main(["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(run), *OVERRIDES])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("predec train: error: No space left on device: ")
    assert "Traceback" not in "\n".join(err)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "No space left on device" in status["message"]
    assert (run / "checkpoints" / "last.ckpt").is_file()  # the step-4 checkpoint stays


def test_status_rewritten_in_place_shortens_a_long_message(tmp_path, monkeypatch):
    import errno

    import predec.engine.run_dir as run_dir_module

    run = RunDir(tmp_path)
    run.set_status("running", step=0)
    assert len(run.status_path.read_bytes()) == run_dir_module.STATUS_RESERVED_BYTES

    def no_space(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_dir_module, "atomic_write_text", no_space)
    run.set_status("failed", step=3, message="x" * 10_000)
    status = run.status()
    assert status["state"] == "failed" and status["step"] == 3 and status["message"].endswith("...")
    assert len(run.status_path.read_bytes()) == run_dir_module.STATUS_RESERVED_BYTES
    run.status_path.unlink()
    with pytest.raises(OSError, match="No space"):
        run.set_status("failed", step=3)  # nothing reserved: the error is the caller's


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_channels_last_training_equals_the_contiguous_layout(tmp_path, task):
    """The default channels-last layout (a faster convolution path) trains the same model as the contiguous one:
    the same losses and weights after the run, within float tolerance."""
    results, steps = {}, 4
    for layout in ("true", "false"):
        recipe = "dense/synth_depth_fpn" if task == "depth" else "dense/synth_seg_fpn"
        extra = [f"trainer.channels_last={layout}", "trainer.val_every_n_steps=null", "trainer.log_every_n_steps=1"]
        extra += [f"trainer.max_steps={steps}", f"trainer.checkpoint_every_n_steps={steps}"]
        run = train_dense(load_config(recipe, [*OVERRIDES, *extra]), tmp_path / layout)
        with open(run.run_dir.logs / "csv" / "metrics.csv") as handle:
            losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
        weights = load_dense_checkpoint(run.run_dir.last_checkpoint).state_dict
        results[layout] = losses, weights
    (losses_cl, weights_cl), (losses, weights) = results["true"], results["false"]
    assert len(losses) == len(losses_cl) == steps
    np.testing.assert_allclose(losses_cl[0], losses[0], rtol=1e-6)  # the same weights: one rounding apart
    np.testing.assert_allclose(losses_cl, losses, rtol=1e-3)  # Adam amplifies rounding a little per step
    # Adam's update is about ±lr wherever a gradient is near zero, so a rounding difference there moves a weight by
    # up to the summed learning rates of the run; everywhere else the weights agree to 1e-4.
    diffs = torch.cat([(weights_cl[k] - v).abs().flatten() for k, v in weights.items() if v.is_floating_point()])
    assert float(diffs.max()) < 2.6e-3 and float((diffs > 1e-4).float().mean()) < 0.01

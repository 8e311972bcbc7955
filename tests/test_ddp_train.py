"""``predec train`` with 2 CPU processes (Lightning DDP, gloo) reaches the weights of one process at the same global
batch.

The single-process equivalent of 2 ranks × batch B is batch B with 2 accumulated micro-batches: the step-indexed
sampler gives micro-batch k of a step the positions rank k reads under DDP, each micro-batch normalises over its own B
samples as each rank does (no sync BN), and the averaged gradient is the same. Only the summation order of the
gradients differs, so the parameters agree to float tolerance (BatchNorm running statistics differ by design: DDP
keeps rank 0's, accumulation updates them twice a step).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from predec.config import load_config
from predec.data import NYUDepthV2
from predec.data.datasets import write_synthetic
from predec.engine import train_dense
from predec.engine.datamodule import StepBatchSampler
from predec.engine.dense_checkpoint import load_dense_checkpoint

RECIPE = "dense/synth_seg_fpn"
OVERRIDES = [
    "model.encoder=test_resnet",
    "model.decoder_kwargs={channels: 16}",
    "data.num_train=8",
    "data.num_val=2",
    "data.image_size=[32, 32]",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "trainer.max_steps=4",
    "trainer.val_every_n_steps=null",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
    "schedule.warmup_steps=1",
]


def parameters(run_dir) -> dict[str, torch.Tensor]:
    state = load_dense_checkpoint(run_dir / "checkpoints" / "last.ckpt").state_dict
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.slow
def test_two_process_training_equals_one_process_at_the_same_global_batch(tmp_path):
    # One thread here as in each DDP process (OMP_NUM_THREADS=1): the same kernels, so what remains is the order of
    # summing the two halves of the gradient. With 2 threads here AdamW amplified the kernels' other reduction order
    # to 8e-4 in 4 steps (measured), which no float tolerance should hide.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_dense(load_config(RECIPE, [*OVERRIDES, "trainer.accumulate_grad_batches=2"]), tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    assert single.step == 4

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = ["train", "--config", RECIPE, "--run-dir", str(tmp_path / "two"), *OVERRIDES]
    proc = subprocess.run(
        [sys.executable, "-m", "predec.cli", *argv, "trainer.devices=2", "trainer.strategy=ddp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # Lightning's line of the second process joining

    one, two = parameters(tmp_path / "one"), parameters(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) > 10
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")

    # The tolerance separates runs that differ: half the global batch (one process, no accumulation) ends elsewhere.
    train_dense(load_config(RECIPE, OVERRIDES), tmp_path / "half")
    half = parameters(tmp_path / "half")
    assert max(float((half[n] - one[n]).abs().max()) for n in one) > 1e-3


@pytest.mark.slow
def test_a_crashed_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """Both ranks stop on a torn image first read at step 3 (after the step-2 checkpoint); with the file restored the
    same command resumes the 2-process run from step 2 and ends with the uninterrupted run's weights."""
    write_synthetic(tmp_path / "data", 20, size=(32, 32), val_fraction=0.2, progress=False)
    nyu = tmp_path / "data" / "nyu"
    overrides = [o for o in OVERRIDES if not o.startswith(("data.num_train", "data.num_val", "data.image_size"))]
    overrides = [*overrides, "data.dataset=nyu", f"data.root={nyu}", "data.train_split=train.txt"]
    overrides = [*overrides, "data.val_split=test.txt", "data.crop_size=[32, 32]", "trainer.devices=2"]
    overrides = [*overrides, "trainer.strategy=ddp"]
    recipe = "dense/synth_depth_fpn"
    config = load_config(recipe, overrides)
    train = NYUDepthV2(nyu, "train.txt")
    assert len(train) == 16

    samplers = [StepBatchSampler(16, 2, config.seed, total_batches=4, rank=r, world_size=2) for r in (0, 1)]
    early = {i for s in samplers for b in (0, 1) for i, _ in s.batch(b)}  # read by steps 1-2, before the checkpoint
    torn = [s.batch(2)[0][0] for s in samplers]  # one image of each rank's step-3 batch
    assert not set(torn) & early

    def run(run_dir) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        argv = ["train", "--config", recipe, "--run-dir", str(run_dir), *overrides]
        command = [sys.executable, "-m", "predec.cli", *argv]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    reference = run(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    originals = {i: train.items[i][0].read_bytes() for i in torn}
    for i in torn:
        train.items[i][0].write_bytes(originals[i][:100])
    crashed = run(tmp_path / "run")
    assert crashed.returncode == 2 and "unreadable or truncated image" in crashed.stderr, crashed.stderr[-3000:]
    assert load_dense_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").step == 2
    for i, data in originals.items():
        train.items[i][0].write_bytes(data)
    resumed = run(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming the interrupted run" in resumed.stderr

    expected = load_dense_checkpoint(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    got = load_dense_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert got.step == expected.step == 4
    for name, value in expected.state_dict.items():
        assert torch.equal(got.state_dict[name], value), name

"""``predec pretrain`` with 2 CPU processes (Lightning DDP, gloo): the weights of one process at the same global
batch, and kill-and-resume of a 2-process run.

As for ``predec train`` (``tests/test_ddp_train.py``), the single-process equivalent of 2 ranks × batch B is batch B
with 2 accumulated micro-batches: the step-indexed sampler gives micro-batch k of a step the views rank k reads
under DDP, each micro-batch normalises over its own B images as each rank does (no sync BN on CPUs), the EMA teachers
move once per optimiser step in both, and the averaged gradient is the same. Three parts of DeCon differ by design,
so the comparison switches them off (each measured to move the weights by 6e-3 to 5e-2 in 4 steps):

- the contrastive term: under DDP its keys (the negatives) are gathered from every rank, a micro-batch has only its
  own (``tests/test_slotcon_ddp.py`` tests the gathering). ``ssl.group_loss_weight=1`` (β) gives it weight 0, so
  its gradient is exactly 0 and only the group (distillation) loss trains;
- the teacher centers: under DDP each is updated once per step from the all-reduced mean of the global batch, with
  accumulation after each micro-batch (the second one sees a moved center; the step's momentum becomes 0.9²).
  ``ssl.center_momentum=1`` keeps them at their initial value;
- DeCon-ML's skip dropout: every DDP rank draws the same masks (``seed_everything`` seeds all ranks alike, checked
  with Lightning 2.6), one process draws its micro-batches' masks one after the other. ``skip_dropout: 0``.

SGD instead of the recipe's AdamW: the bias of each FPN output norm (``fpn_output{2..5}.norm.bias``) feeds only its
level's projector, whose Linear → BatchNorm cancels a per-channel constant, so its gradient is 0 up to float noise,
and AdamW's m/√v turns that noise into steps of ±lr (2.8e-4 after 4 steps, measured). SGD at lr 0.01 keeps the
noise at 7e-6 (at lr 0.05 the sharp softmaxes, τ 0.07 / 0.1, amplify it to 2e-5 in the stem). BatchNorm running
statistics differ by design (DDP keeps rank 0's, accumulation updates them twice a step) and are not compared.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from predec.cli import main
from predec.data.io import write_image
from predec.engine.checkpoint import read_checkpoint
from predec.engine.datamodule import StepBatchSampler

RECIPE = "pretrain/synth_decon_ml"
OVERRIDES = [
    "model.encoder=test_resnet",
    "model.decoder_kwargs={channels: 16, skip_dropout: 0.0}",
    "ssl.num_prototypes=16",
    "ssl.hidden_dim=64",
    "ssl.out_dim=32",
    "data.num_train=16",
    "data.image_size=[64, 64]",
    "data.view_size=64",
    "data.crop_scale=[0.3, 1.0]",
    "data.batch_size=4",
    "schedule.warmup_steps=1",
    "trainer.max_steps=4",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
]
# What DDP and gradient accumulation compute alike (see the module docstring).
EQUIVALENT = [
    "ssl.group_loss_weight=1.0",
    "ssl.center_momentum=1.0",
    "optim.name=sgd",
    "optim.lr=0.01",
    "optim.weight_decay=1.0e-4",
]
DDP = ["trainer.devices=2", "trainer.strategy=ddp"]


class WeightsDifferError(AssertionError):
    """The parameters of the two runs differ."""


def parameters(run_dir) -> dict[str, torch.Tensor]:
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def pretrain_ddp(run_dir, *overrides: str, recipe: str = RECIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = ["pretrain", "--config", recipe, "--run-dir", str(run_dir), *overrides, *DDP]
    return subprocess.run(
        [sys.executable, "-m", "predec.cli", *argv], env=env, capture_output=True, text=True, timeout=300
    )


def pretrain_here(run_dir, *overrides: str, capsys) -> None:
    # One thread here as in each DDP process (OMP_NUM_THREADS=1): the same kernels, whatever conftest sets.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["pretrain", "--config", RECIPE, "--run-dir", str(run_dir), *overrides])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err[-3000:]


@pytest.mark.slow
def test_two_process_pretraining_equals_one_process_at_the_same_global_batch(tmp_path, capsys):
    pretrain_here(tmp_path / "one", *OVERRIDES, *EQUIVALENT, "trainer.accumulate_grad_batches=2", capsys=capsys)
    proc = pretrain_ddp(tmp_path / "two", *OVERRIDES, *EQUIVALENT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # Lightning's line of the second process joining
    one, two = parameters(tmp_path / "one"), parameters(tmp_path / "two")
    assert one.keys() == two.keys() and any(k.startswith("head.decoder_p2.") for k in one) and len(one) > 100

    # The tolerance separates runs that differ: half the global batch (one process, no accumulation) ends elsewhere.
    pretrain_here(tmp_path / "half", *OVERRIDES, *EQUIVALENT, capsys=capsys)
    half = parameters(tmp_path / "half")
    assert max(float((half[n] - one[n]).abs().max()) for n in one) > 1e-2

    differ = []
    for name, value in one.items():
        try:
            torch.testing.assert_close(two[name], value, rtol=1e-4, atol=2e-5)
        except AssertionError:
            differ.append(f"{name} (max {float((two[name] - value).abs().max()):.2g})")
    if differ:
        raise WeightsDifferError(f"{len(differ)} of {len(one)} tensors differ: {', '.join(differ[:5])}")


@pytest.mark.slow
def test_a_crashed_two_process_pretraining_resumes_to_the_uninterrupted_weights(tmp_path):
    """DeCon-ML as the recipe has it (contrastive term, moving centers, skip dropout 0.5, AdamW) on an image folder:
    both ranks stop on a torn image first read at step 3 (after the step-2 checkpoint); with the file restored the
    same command resumes the 2-process run from step 2 and ends with the uninterrupted run's weights, bit for bit."""
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(32):  # one pass over the folder in 4 steps of 2 ranks × 4 images
        write_image(folder / f"img_{i:02d}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    paths = sorted(folder.iterdir())  # UnlabeledFolder's order
    overrides = [o for o in OVERRIDES if not o.startswith(("model.decoder_kwargs", "data.num_train"))]
    overrides = [*overrides, "model.decoder_kwargs={channels: 16}", "data.dataset=folder", f"data.root={folder}"]

    samplers = [StepBatchSampler(32, 4, 0, total_batches=4, rank=r, world_size=2) for r in (0, 1)]
    early = {i for s in samplers for b in (0, 1) for i, _ in s.batch(b)}  # read by steps 1-2, before the checkpoint
    torn = [s.batch(2)[0][0] for s in samplers]  # one image of each rank's step-3 batch
    assert not set(torn) & early

    reference = pretrain_ddp(tmp_path / "reference", *overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]
    originals = {i: paths[i].read_bytes() for i in torn}
    for i in torn:
        paths[i].write_bytes(originals[i][:100])
    crashed = pretrain_ddp(tmp_path / "run", *overrides)
    assert crashed.returncode == 2 and "unreadable or truncated image" in crashed.stderr, crashed.stderr[-3000:]
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2
    for i, data in originals.items():
        paths[i].write_bytes(data)
    resumed = pretrain_ddp(tmp_path / "run", *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming the interrupted run" in resumed.stderr

    expected = read_checkpoint(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    got = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == 4
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], value), name

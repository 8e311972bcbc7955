"""``predec eval`` with 2 CPU processes (Lightning DDP, gloo) gives the single-process metrics.

The evaluation set is split unevenly (5 images over 2 processes, batches of 2) to exercise the unrepeated shards and
the SUM-reduction of the metric states. Depth is the case run (each extra process start costs tens of seconds on
2 cores): its state holds both dtypes the reduction must handle (float64 per-image sums, int64 counts); the
segmentation state (int64 areas) goes through the same code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from predec.cli import main
from predec.config import load_config
from predec.engine.dense import DenseModule

OVERRIDES = [
    "model.encoder=test_resnet",
    "data.num_val=5",
    "data.image_size=[32, 48]",
    "data.eval_batch_size=2",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "trainer.accelerator=cpu",
]


@pytest.mark.slow
def test_two_process_eval_equals_single_process(tmp_path):
    recipe = "dense/synth_depth_fpn"
    model_dir = tmp_path / "model"
    DenseModule(load_config(recipe, OVERRIDES)).model.save_pretrained(model_dir)
    base = ["eval", "--checkpoint", str(model_dir), "--config", recipe, *OVERRIDES]

    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ddp = ["trainer.devices=2", "trainer.strategy=ddp", "--out", str(tmp_path / "two")]
    proc = subprocess.run(
        [sys.executable, "-m", "predec.cli", *base, *ddp], env=env, capture_output=True, text=True, timeout=500
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["metrics"].keys() == two["metrics"].keys()
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), name
    assert one["metrics"]["num_images"] == two["metrics"]["num_images"] == 5  # no image dropped or repeated

"""``predec demo``: the quick demo end to end, stage caching, failure reporting, statistics."""

from __future__ import annotations

import json
import math
import time

import pytest

from predec.cli import main
from predec.config import ConfigError
from predec.demo import (
    TASK_METRICS,
    VARIANT_NAMES,
    Demo,
    DemoConfig,
    compare,
    load_demo_config,
    mean_std,
    plan,
)

TINY = [
    "workers=1",
    "classification.num_train=64",
    "classification.num_val=32",
    "classification.max_steps=2",
    "classification.batch_size=16",
    "finetune.tasks=[segmentation]",
    "finetune.variants=[fpn_pt_enc,fpn_scratch]",
    "finetune.num_train=16",
    "finetune.num_val=8",
    "finetune.image_size=[32,32]",
    "finetune.max_steps=2",
    "finetune.batch_size=4",
    "finetune.grid_images=2",
]


def test_mean_std_and_noise_rule():
    assert mean_std([1.0]) == (1.0, None)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    clear = compare([0.50, 0.51, 0.52], [0.40, 0.41, 0.42])  # Δ 0.1, pooled std 0.01
    assert clear["delta"] == pytest.approx(0.1) and clear["pooled_std"] == pytest.approx(0.01)
    assert clear["exceeds_noise"] is True
    assert compare([0.50, 0.60, 0.40], [0.45, 0.55, 0.35])["exceeds_noise"] is False
    assert compare([0.5], [0.4])["exceeds_noise"] is None  # one seed: undecidable


def test_plan_dependencies_and_bad_settings():
    config = load_demo_config("quick")
    stages = {s.name: s for s in plan(config)}
    assert set(stages["finetune/segmentation/xnet_pt_dec/seed0"].needs) == {"classification/resnet18"}
    assert stages["finetune/depth/fpn_decon_ml/seed0"].needs == ("ssl/decon-ml",)
    assert stages["ssl/slotcon"].needs == ("classification/resnet18",)
    assert stages["finetune/depth/fpn_scratch/seed0"].needs == ()
    with pytest.raises(ConfigError, match="Unknown demo variant 'fpn_nope'"):
        load_demo_config("quick", ["finetune.variants=[fpn_nope]"])
    with pytest.raises(ConfigError, match=r"finetune\.seeds is empty"):
        load_demo_config("quick", ["finetune.seeds=[]"])
    with pytest.raises(ConfigError, match="Unknown config key"):
        load_demo_config("quick", ["finetune.stepz=3"])
    with pytest.raises(ConfigError, match=r"classification\.crop_scale=\[0\.9, 0\.5\]"):
        load_demo_config("quick", ["classification.crop_scale=[0.9, 0.5]"])
    with pytest.raises(ConfigError, match="fpn_channels=0"):
        load_demo_config("quick", ["fpn_channels=0"])


def test_the_settings_defaults_are_the_shipped_full_settings():
    assert load_demo_config("full") == DemoConfig()


def test_failed_stage_is_reported_others_run_and_rerun_reuses_cache(tmp_path):
    """A classification stage broken through an override fails; the variant needing it is marked failed with the
    error, the other variant still runs; a second run reuses the finished stages and says so."""
    overrides = [*TINY, "classification.overrides=[optim.name=bogus]"]
    lines: list[str] = []
    results = Demo(load_demo_config("quick", overrides), tmp_path, echo=lines.append).run()
    seg = results["variants"]["segmentation"]
    assert seg["fpn_pt_enc"]["state"] == "failed"
    assert "classification/resnet18" in seg["fpn_pt_enc"]["errors"]["0"]
    assert results["stages"]["classification/resnet18"]["state"] == "failed"
    assert "bogus" in results["stages"]["classification/resnet18"]["error"]
    assert seg["fpn_scratch"]["state"] == "ok"
    assert all(math.isfinite(v) for v in seg["fpn_scratch"]["mean"].values())
    report = (tmp_path / "report.md").read_text()
    assert "## Failed stages" in report and "bogus" in report
    assert (tmp_path / "predictions_segmentation.png").is_file()

    done = tmp_path / "stages/finetune/segmentation/fpn_scratch/seed0/done.json"
    before = done.stat().st_mtime_ns
    time.sleep(0.01)
    lines.clear()
    again = Demo(load_demo_config("quick", overrides), tmp_path, echo=lines.append).run()
    assert any("cached  finetune/segmentation/fpn_scratch/seed0" in line for line in lines)
    assert done.stat().st_mtime_ns == before
    assert again["stages"]["finetune/segmentation/fpn_scratch/seed0"]["state"] == "cached"
    assert again["variants"]["segmentation"]["fpn_scratch"]["mean"] == seg["fpn_scratch"]["mean"]
    assert again["stages"]["classification/resnet18"]["state"] == "failed"  # failed stages are retried

    changed = Demo(load_demo_config("quick", [*overrides, "finetune.max_steps=3"]), tmp_path, echo=lines.append)
    assert changed.run()["stages"]["finetune/segmentation/fpn_scratch/seed0"]["state"] == "done"  # new settings


def test_quick_demo_end_to_end(tmp_path):
    """The CI smoke test: ``predec demo --quick`` within its budget, every variant's metrics finite."""
    started = time.perf_counter()
    code = main(["demo", "--quick", "--out", str(tmp_path)])
    seconds = time.perf_counter() - started
    results = json.loads((tmp_path / "results.json").read_text())
    failed = {n: r["error"] for n, r in results["stages"].items() if r["state"] != "done"}
    assert code == 0, failed
    for task, metrics in TASK_METRICS.items():
        for name in VARIANT_NAMES:
            entry = results["variants"][task][name]
            assert entry["state"] == "ok"
            assert set(entry["mean"]) == set(metrics)
            assert all(math.isfinite(v) for v in entry["mean"].values())
    accuracy = results["pretraining"]["classification"]["resnet18"]["outputs"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0
    assert (tmp_path / "report.md").is_file()
    assert (tmp_path / "predictions_depth.png").is_file() and (tmp_path / "curves_segmentation.png").is_file()
    # budget: 180 s on 2 idle cores (177 s measured at load 3.6, docs/demo.md); twice that allows a slower CI machine
    assert seconds < 360, f"predec demo --quick took {seconds:.0f} s (budget: 180 s on 2 idle cores)"

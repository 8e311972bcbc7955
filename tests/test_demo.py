"""``predec demo``: the quick demo from the zoo end to end, --from-scratch, stage caching, failures, statistics."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import torch

from predec.cli import main
from predec.config import ConfigError
from predec.demo import (
    TASK_METRICS,
    Demo,
    DemoConfig,
    compare,
    load_demo_config,
    mean_std,
    plan,
)
from predec.demo.report import SCENE_CLASS_NAMES
from predec.demo.stages import weight_change
from predec.zoo.registry import ZOO_DIR_ENV, find_entry, package_dir

TINY = [
    "workers=1",
    "finetune.tasks=[segmentation]",
    "finetune.variants=[fpn_pt_enc,fpn_scratch]",
    "finetune.num_train=[16]",
    "finetune.num_val=8",
    "finetune.image_size=[32,32]",
    "finetune.max_steps=2",
    "finetune.batch_size=4",
    "finetune.grid_images=2",
]
TINY_ZOO = (
    "[trainer.max_steps=2, data.num_train=16, data.num_val=8, data.batch_size=4, data.eval_batch_size=8, "
    "'data.image_size=[32,32]', data.view_size=32, schedule.warmup_steps=1, trainer.val_every_n_steps=null]"
)


def test_mean_std_and_noise_rule():
    assert mean_std([1.0]) == (1.0, None)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    clear = compare([0.50, 0.51, 0.52], [0.40, 0.41, 0.42])  # Δ 0.1, pooled std 0.01
    assert clear["delta"] == pytest.approx(0.1) and clear["pooled_std"] == pytest.approx(0.01)
    assert clear["exceeds_noise"] is True
    assert compare([0.50, 0.60, 0.40], [0.45, 0.55, 0.35])["exceeds_noise"] is False
    assert compare([0.5], [0.4])["exceeds_noise"] is None  # one seed: undecidable


def test_weight_change_per_part():
    import torch

    before = {"encoder.w": torch.ones(4), "decoder.backbone.w": torch.ones(4), "decoder.bn.running_var": torch.ones(2)}
    after = {
        "encoder.w": torch.ones(4),
        "decoder.backbone.w": torch.full((4,), 1.5),
        "decoder.bn.running_var": 2 * torch.ones(2),
    }
    change = weight_change(before, after)
    assert change["encoder"] == 0.0
    assert change["decoder"] == pytest.approx(0.5) and change["decoder.backbone"] == pytest.approx(0.5)


def test_plan_from_the_zoo_and_from_scratch():
    """By default fine-tuning stages take zoo entries by name and need no stage; --from-scratch adds one stage per
    entry (the SSL ones after the classification entry they start from) and the fine-tuning stages need them."""
    config = load_demo_config("quick")
    stages = {s.name: s for s in plan(config)}
    assert not [n for n in stages if n.startswith("zoo/")]
    xnet = stages["finetune/segmentation/xnet_pt_dec/n32/seed0"]
    assert xnet.needs == () and xnet.spec["weights"] == {
        "encoder": "predec:synth-resnet18h-cls",
        "decoder": "predec:synth-resnet18h-cls",
    }
    assert xnet.spec["zoo"]["classification"] == find_entry("synth-resnet18h-cls").sha256
    assert stages["finetune/depth/fpn_scratch/n32/seed0"].spec["weights"] == {"encoder": None, "decoder": None}
    fpn = stages["finetune/depth/fpn_decon_ml/n32/seed0"].spec["model"]
    assert fpn["arch"] == "fpn" and fpn["decoder_kwargs"] == {"channels": 128}
    assert xnet.spec["model"]["decoder"] == xnet.spec["model"]["encoder"]
    assert xnet.spec["model"]["decoder_kwargs"] == {  # bilinear Re-Shapes: docs/demo.md "Investigation"
        "reshape": "bilinear",
        "backbone_kwargs": find_entry("synth-resnet18h-cls").model["encoder_kwargs"],
    }

    scratch = {s.name: s for s in plan(config, from_scratch=True)}
    zoo = [n for n in scratch if n.startswith("zoo/")]
    assert zoo[0] == "zoo/synth-resnet18h-cls" and len(zoo) == 5
    assert scratch["zoo/synth-resnet18h-slotcon"].needs == ("zoo/synth-resnet18h-cls",)
    assert scratch["zoo/synth-resnet18h-xnet-decon"].needs == ("zoo/synth-resnet18h-cls",)
    assert "zoo/synth-resnet18h-xnet-decon" in scratch["finetune/depth/xnet_decon_dec/n32/seed0"].needs
    decon_xnet = stages["finetune/depth/xnet_decon_dec/n32/seed0"].spec
    assert decon_xnet["weights"] == dict.fromkeys(("encoder", "decoder"), "predec:synth-resnet18h-xnet-decon")
    assert decon_xnet["model"] == xnet.spec["model"]  # the same ×Net as xnet_pt_dec: only the weights differ
    assert scratch["finetune/depth/fpn_decon_ml/n32/seed0"].needs == ("zoo/synth-resnet18h-fpn-decon-ml",)
    assert scratch["finetune/depth/fpn_scratch/n32/seed0"].needs == ()


def test_bad_settings_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="Unknown demo variant 'fpn_nope'"):
        load_demo_config("quick", ["finetune.variants=[fpn_nope]"])
    with pytest.raises(ConfigError, match=r"finetune\.seeds is empty"):
        load_demo_config("quick", ["finetune.seeds=[]"])
    with pytest.raises(ConfigError, match="Unknown config key"):
        load_demo_config("quick", ["finetune.stepz=3"])
    with pytest.raises(ConfigError, match=r"finetune\.num_train=\[32, 32\]"):
        load_demo_config("quick", ["finetune.num_train=[32, 32]"])
    assert load_demo_config("quick", ["finetune.num_train=64"]).finetune.num_train == [64]
    with pytest.raises(ConfigError, match=r"Unknown config key 'zoo\.decon_xl'"):
        load_demo_config("quick", ["zoo.decon_xl=x"])
    with pytest.raises(
        ConfigError, match=r"finetune\.image_size=\[80, 80\].*multiples of 32 \(e\.g\. \[64, 64\] or \[96, 96\]\)"
    ):
        load_demo_config("quick", ["finetune.image_size=[80,80]"])


def test_seeds_and_steps_per_variant_and_label_budget(tmp_path):
    """Variants of a decisive comparison get finetune.seeds, the others reference_seeds; max_steps per budget; model
    selection and test scenes reach every stage's recipe."""
    from predec.demo.stages import finetune_config

    config = load_demo_config(
        "quick",
        [
            "finetune.tasks=[depth]",
            "finetune.variants=[xnet_pt_dec,xnet_rand_dec,fpn_pt_enc,fpn_scratch]",
            "finetune.seeds=[0,1,2]",
            "finetune.reference_seeds=[7]",
            "finetune.num_train=[16,32]",
            "finetune.max_steps={16: 40, 32: 80}",
            "finetune.val_every_n_steps=20",
            "finetune.patience=2",
            "finetune.num_test=12",
            "finetune.scene_options={camera_height: [1.3, 1.3]}",
        ],
    )
    stages = {s.name: s for s in plan(config)}
    names = sorted(n.rsplit("/", 3)[1] + "/" + n.rsplit("/", 2)[1] + "/" + n.rsplit("/", 1)[1] for n in stages)
    assert names == sorted(
        [f"{v}/n{n}/seed{k}" for v in ("xnet_pt_dec", "xnet_rand_dec") for n in (16, 32) for k in (0, 1, 2)]
        + [f"{v}/n{n}/seed7" for v in ("fpn_pt_enc", "fpn_scratch") for n in (16, 32)]
    )
    stage = stages["finetune/depth/fpn_pt_enc/n32/seed7"]
    recipe = finetune_config(stage.spec, stage.spec["weights"], tmp_path / "run", False)
    assert recipe.trainer.max_steps == 80
    assert stages["finetune/depth/fpn_pt_enc/n16/seed7"].spec["settings"]["max_steps"] == 40
    assert (recipe.trainer.val_every_n_steps, recipe.trainer.monitor, recipe.trainer.patience) == (20, "auto", 2)
    assert (recipe.data.test_split, recipe.data.num_test, recipe.data.num_val) == ("test", 12, 16)
    assert recipe.data.reader_kwargs == {"camera_height": [1.3, 1.3]}
    with pytest.raises(ConfigError, match=r"one per label budget of finetune\.num_train=\[32\]"):
        load_demo_config("quick", ["finetune.max_steps={16: 40}"])
    with pytest.raises(ConfigError, match=r"finetune\.patience needs finetune\.val_every_n_steps"):
        load_demo_config("quick", ["finetune.patience=3"])
    with pytest.raises(ConfigError, match=r"finetune\.schedule=plateau needs finetune\.val_every_n_steps"):
        load_demo_config("quick", ["finetune.schedule=plateau"])
    with pytest.raises(ConfigError, match=r"finetune\.min_delta=\{'nope': 0\.1\}: give a number >= 0 per task"):
        load_demo_config("quick", ["finetune.min_delta={nope: 0.1}"])

    plateau = load_demo_config(
        "quick",
        [
            "finetune.tasks=[depth]",
            "finetune.num_train=[32]",
            "finetune.max_steps=2000",
            "finetune.val_every_n_steps=50",
            "finetune.schedule=plateau",
            "finetune.plateau_patience=4",
            "finetune.min_delta={depth: 0.001}",
        ],
    )
    stage = next(s for s in plan(plateau) if s.kind == "finetune")
    recipe = finetune_config(stage.spec, stage.spec["weights"], tmp_path / "plateau", False)
    schedule = recipe.schedule
    assert (schedule.name, schedule.warmup_steps, schedule.plateau_patience, schedule.gamma) == ("plateau", 100, 4, 0.1)
    assert (recipe.trainer.min_delta, recipe.trainer.monitor) == (0.001, "auto")


def test_flattened_compares_the_tail_with_the_best_before():
    from predec.demo.results import flattened

    rising = {str(s): {"val/mIoU": 0.1 + 0.01 * s / 10} for s in range(10, 110, 10)}  # +10 % in the last fifth
    assert flattened(rising, "val/mIoU", "max")["flat"] is False
    flat = {str(s): {"val/mIoU": 0.5 + (0.001 if s > 80 else 0.0)} for s in range(10, 110, 10)}  # +0.2 %
    result = flattened(flat, "val/mIoU", "max")
    assert result["flat"] is True and result["relative_gain"] == pytest.approx(0.002)
    falling = {str(s): {"val/abs_rel": 0.3 - 0.001 * s} for s in range(10, 110, 10)}  # AbsRel still dropping
    assert flattened(falling, "val/abs_rel", "min")["flat"] is False
    assert flattened({"10": {"val/mIoU": 0.2}}, "val/mIoU", "max")["flat"] is None


def test_selection_test_split_and_probe_stages_end_to_end(tmp_path):
    """A demo whose runs select their weights on validation scenes, report test scenes, and probe the frozen
    pre-trained decoders: the stage records and results.json carry the selection, the validation curve and the probe,
    and the report draws the validation curves."""
    overrides = [
        *TINY,
        "finetune.max_steps=6",
        "finetune.val_every_n_steps=2",
        "finetune.num_test=8",
        "probe.variants=[fpn_pt_enc,fpn_scratch]",
        "probe.num_train=16",
        "probe.seeds=[0,1]",
        "probe.epochs=2",
    ]
    results = Demo(load_demo_config("quick", overrides), tmp_path, echo=lambda _: None).run()
    run = results["variants"]["segmentation"]["fpn_pt_enc"]["budgets"]["16"]
    selection = run["selection"]["0"]
    assert selection["monitor"] == "val/mIoU" and selection["step"] in (2, 4, 6) and selection["last_step"] == 6
    assert "flat" in selection["flattened"]
    outputs = results["stages"]["finetune/segmentation/fpn_pt_enc/n16/seed0"]["outputs"]
    assert sorted(outputs["val_history"], key=int) == ["2", "4", "6"] and outputs["train_curve"]
    assert outputs["metrics"]["mIoU"] != outputs["val_metrics"]["mIoU"]  # test scenes, not the validation ones
    probe = results["probe"]["segmentation"]
    assert set(probe["variants"]) == {"fpn_pt_enc", "fpn_scratch"} and probe["num_train"] == 16
    assert all(len(v["per_seed"]) == 2 for v in probe["variants"].values())
    assert [c["a"] for c in probe["comparisons"]][:1] == ["fpn_pt_enc"]
    report = (tmp_path / "report.md").read_text()
    assert "Frozen-feature probe, segmentation" in report and "step chosen" in report
    assert (tmp_path / "validation_segmentation.png").is_file()


def test_the_settings_defaults_are_the_shipped_full_settings():
    assert load_demo_config("full") == DemoConfig()


def test_report_class_names_are_synthscenes_classes():
    from predec.data.synthetic import SCENE_CLASSES

    assert tuple(SCENE_CLASSES) == SCENE_CLASS_NAMES


def test_failed_stage_is_reported_others_run_and_rerun_reuses_cache(tmp_path):
    """--from-scratch with a zoo recipe broken at run time: the zoo stage fails, the variant needing it is skipped
    with the error, the other variant still runs; a second run reuses the finished stages and says so."""
    overrides = [*TINY, "zoo.scratch_overrides=[optim.lr=-1.0]"]
    lines: list[str] = []
    results = Demo(load_demo_config("quick", overrides), tmp_path, echo=lines.append, from_scratch=True).run()
    seg = results["variants"]["segmentation"]
    assert seg["fpn_pt_enc"]["budgets"]["16"]["state"] == "failed"
    assert "zoo/synth-resnet18h-cls" in seg["fpn_pt_enc"]["budgets"]["16"]["errors"]["0"]
    assert results["stages"]["zoo/synth-resnet18h-cls"]["state"] == "failed"
    assert "learning rate" in results["stages"]["zoo/synth-resnet18h-cls"]["error"]
    scratch = seg["fpn_scratch"]["budgets"]["16"]
    assert scratch["state"] == "ok"
    assert all(math.isfinite(v) for v in scratch["mean"].values())
    assert len(scratch["per_class_iou"]) == len(SCENE_CLASS_NAMES) and "encoder" in scratch["weight_change"]
    report = (tmp_path / "report.md").read_text()
    assert "## Failed stages" in report and "learning rate" in report
    assert "**A smoke test, not a result**" in report
    assert (tmp_path / "predictions_segmentation.png").is_file()

    done = tmp_path / "stages/finetune/segmentation/fpn_scratch/n16/seed0/done.json"
    before = done.stat().st_mtime_ns
    time.sleep(0.01)
    lines.clear()
    again = Demo(load_demo_config("quick", overrides), tmp_path, echo=lines.append, from_scratch=True).run()
    assert any("cached  finetune/segmentation/fpn_scratch/n16/seed0" in line for line in lines)
    assert done.stat().st_mtime_ns == before
    assert again["stages"]["finetune/segmentation/fpn_scratch/n16/seed0"]["state"] == "cached"
    assert again["variants"]["segmentation"]["fpn_scratch"]["budgets"]["16"]["mean"] == scratch["mean"]
    assert again["stages"]["zoo/synth-resnet18h-cls"]["state"] == "failed"  # failed stages are retried

    changed = Demo(load_demo_config("quick", [*overrides, "finetune.max_steps=3"]), tmp_path, echo=lines.append)
    assert changed.run()["stages"]["finetune/segmentation/fpn_scratch/n16/seed0"]["state"] == "done"  # new settings


@pytest.mark.slow
def test_demo_from_scratch_rebuilds_the_zoo_and_fine_tunes_on_it(tmp_path):
    """--from-scratch (tiny recipes): the entries are built into <out>/zoo, fine-tuning loads those files, the
    report says the weights were rebuilt; two label budgets give a label-efficiency figure."""
    overrides = [
        *TINY,
        "finetune.variants=[xnet_pt_dec,fpn_pt_enc,fpn_decon_ml]",
        "finetune.num_train=[8,16]",
        "finetune.seeds=[0,1]",
        f"zoo.scratch_overrides={TINY_ZOO}",
    ]
    results = Demo(load_demo_config("quick", overrides), tmp_path, echo=lambda _: None, from_scratch=True).run()
    failed = {n: r["error"] for n, r in results["stages"].items() if r["state"] != "done"}
    assert not failed
    assert sorted(n for n in results["stages"] if n.startswith("zoo/")) == [
        "zoo/synth-resnet18h-cls",
        "zoo/synth-resnet18h-fpn-decon-ml",
    ]
    for name in ("synth-resnet18h-cls", "synth-resnet18h-fpn-decon-ml"):
        assert find_entry(name, [tmp_path / "zoo"]).verify().is_file()
    assert results["zoo"]["decon-ml"]["state"] == "rebuilt" and results["zoo"]["decon-ml"]["steps"] == 2
    run_config = (tmp_path / "stages/finetune/segmentation/fpn_decon_ml/n8/seed0/run/config.yaml").read_text()
    assert str(tmp_path / "zoo" / "synth-resnet18h-fpn-decon-ml.safetensors") in run_config
    assert {(c["a"], c["b"], c["num_train"]) for c in results["comparisons"]} == {
        ("xnet_pt_dec", "fpn_pt_enc", 8),
        ("xnet_pt_dec", "fpn_pt_enc", 16),
    }
    assert all(c["exceeds_noise"] is not None for c in results["comparisons"])  # two seeds: decidable
    assert (tmp_path / "labels_segmentation_mIoU.png").is_file()
    assert "rebuilt by this run" in (tmp_path / "report.md").read_text()


def test_corrupt_zoo_entry_stops_the_demo_before_training(tmp_path, monkeypatch, capsys):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(package_dir() / f"synth-resnet18h-cls{suffix}", zoo)
    weights = zoo / "synth-resnet18h-cls.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setenv(ZOO_DIR_ENV, str(zoo))
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), *TINY]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "sha256" in err and "predec zoo build synth-resnet18h-cls" in err
    assert not (tmp_path / "demo" / "stages").exists()


def test_quick_demo_end_to_end(tmp_path):
    """The CI smoke test: ``predec demo --quick`` from the zoo within its budget, every variant's metrics finite,
    and no pre-training stage."""
    started = time.perf_counter()
    code = main(["demo", "--quick", "--out", str(tmp_path)])
    seconds = time.perf_counter() - started
    results = json.loads((tmp_path / "results.json").read_text())
    failed = {n: r["error"] for n, r in results["stages"].items() if r["state"] != "done"}
    assert code == 0, failed
    assert all(n.startswith("finetune/") for n in results["stages"])
    for task, metrics in TASK_METRICS.items():
        for name in load_demo_config("quick").finetune.variants:
            entry = results["variants"][task][name]["budgets"]["32"]
            assert entry["state"] == "ok"
            assert set(entry["mean"]) == set(metrics)
            assert all(math.isfinite(v) for v in entry["mean"].values())
    assert results["zoo"]["classification"]["state"] == "loaded"
    assert results["zoo"]["classification"]["metric"]["name"] == "top1"
    assert (tmp_path / "report.md").is_file()
    assert (tmp_path / "predictions_depth.png").is_file() and (tmp_path / "curves_segmentation.png").is_file()
    # budget: 180 s on 2 idle cores (docs/demo.md); twice that allows a slower CI machine
    assert seconds < 360, f"predec demo --quick took {seconds:.0f} s (budget: 180 s on 2 idle cores)"

    # A stage's recorded command re-runs it alone, from the output directory, to the same test metrics.
    entry = results["variants"]["segmentation"]["xnet_pt_dec"]["budgets"]["32"]
    seed, command = next(iter(entry["commands"].items()))
    argv = command.split()
    assert argv[:2] == ["predec", "train"]
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(tmp_path)
    torch.set_num_threads(1)  # as a demo worker (threads_per_worker: 1): the same kernels
    try:
        assert main([*argv[1:], "trainer.progress_bar=false"]) == 0
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    rerun = json.loads((tmp_path / argv[-1] / "metrics.json").read_text())["metrics"]
    assert rerun["mIoU"] == pytest.approx(entry["per_seed"][seed]["mIoU"], abs=1e-6)


def test_extra_label_budgets_for_one_variant_reach_stages_results_and_report(tmp_path):
    """``finetune.extra_num_train`` adds a budget to one variant only: its stages, its row in results.json and the
    report, no comparison at that budget, the label curve drawn through it; max_steps must cover it."""
    from predec.demo.report import write_all
    from predec.demo.results import collect_results

    overrides = [
        "finetune.tasks=[depth]",
        "finetune.variants=[xnet_pt_dec,xnet_rand_dec,fpn_pt_enc]",
        "finetune.seeds=[0,1]",
        "finetune.reference_seeds=[0]",
        "finetune.num_train=[16,32]",
        "finetune.extra_num_train={fpn_pt_enc: [128]}",
    ]
    with pytest.raises(ConfigError, match=r"one per label budget of finetune\.num_train=\[16, 32\] and extra_num"):
        load_demo_config("quick", [*overrides, "finetune.max_steps={16: 4, 32: 8}"])
    with pytest.raises(ConfigError, match=r"Unknown demo variant 'nope'"):
        load_demo_config("quick", ["finetune.extra_num_train={nope: [128]}"])
    with pytest.raises(ConfigError, match=r"finetune\.extra_num_train=\{'fpn_pt_enc': \[0\]\}: give \{variant"):
        load_demo_config("quick", ["finetune.extra_num_train={fpn_pt_enc: [0]}"])
    # the benchmark restricted to some variants (how its parts are run) ignores the others' extra budgets
    part = load_demo_config("benchmark", ["finetune.variants=[xnet_pt_dec,xnet_rand_dec]"])
    assert part.finetune.all_budgets() == [32, 128, 512]
    config = load_demo_config("quick", [*overrides, "finetune.max_steps={16: 4, 32: 8, 128: 16}"])
    stages = plan(config)
    names = {s.name for s in stages}
    assert "finetune/depth/fpn_pt_enc/n128/seed0" in names
    assert not any("/n128/" in n for n in names if "xnet" in n)
    extra = next(s for s in stages if s.name == "finetune/depth/fpn_pt_enc/n128/seed0")
    assert extra.spec["settings"]["max_steps"] == 16

    def done(stage):  # a finished run whose AbsRel falls with the budget
        budget = stage.spec["num_train"]
        metrics = dict.fromkeys(TASK_METRICS["depth"], 0.5)
        metrics["abs_rel"] = 1.0 / budget + 0.001 * stage.spec["seed"]
        return {"state": "done", "seconds": 1.0, "outputs": {"metrics": metrics}}

    states = {s.name: done(s) for s in stages if s.kind == "finetune"}
    results = collect_results(config, stages, states, 10.0, "0 0 0", "0 0 0")
    budgets = results["variants"]["depth"]["fpn_pt_enc"]["budgets"]
    assert sorted(budgets, key=int) == ["16", "32", "128"]
    assert budgets["128"]["mean"]["abs_rel"] == pytest.approx(1 / 128)
    assert "128" not in results["variants"]["depth"]["xnet_pt_dec"]["budgets"]
    assert {c["num_train"] for c in results["comparisons"]} == {16, 32}
    paths = write_all(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Depth, 128 labelled scenes" in report and "fpn_pt_enc also [128]" in report
    table = report.split("## Depth, 128 labelled scenes")[1].split("##")[0]
    assert "fpn_pt_enc" in table and "xnet_pt_dec" not in table
    assert tmp_path / "labels_depth_abs_rel.png" in paths


def test_demo_workers_end_when_the_demo_process_is_killed(tmp_path):
    """SIGKILL of the process running the stages must not leave its workers blocked forever."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import concurrent.futures as cf, multiprocessing, os, signal, time\n"
        "from predec.demo.runner import exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    pool = cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=exit_with_parent, initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(0.5)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    worker = int(proc.stdout.split()[0])
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError(f"worker {worker} outlived its killed parent by 30 s")


def test_the_report_says_what_short_runs_cannot_tell():
    from predec.demo.report import scope_lines

    def results(demo: str, validate: int | None) -> dict:
        return {"demo": demo, "settings": {"finetune": {"max_steps": 200, "val_every_n_steps": validate}}}

    short = scope_lines(results("full", None))[0]
    assert "Short runs" in short and "a fixed 200 steps" in short
    assert "smoke test" in scope_lines(results("quick", 2))[0]
    assert scope_lines(results("benchmark", 100)) == []

"""End to end through the CLI: ``predec train`` lowers the loss, ``predec eval`` writes metrics JSON, ``predec predict``
writes coloured and raw outputs — for depth and segmentation, ×Net and FPN, on tiny models and SynthScenes."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from predec.cli import main
from predec.config import load_config
from predec.data.io import write_image
from predec.data.synthetic import SynthScenes

CASES = [("depth", "xnet"), ("depth", "fpn"), ("segmentation", "xnet"), ("segmentation", "fpn")]
STEPS = 20


def tiny_overrides(arch: str) -> list[str]:
    """A few seconds of training: test_resnet (× test_convnext), 32×32 scenes, fp32; 4 training scenes and flips
    only, so that 20 steps visibly fit them."""
    overrides = [
        "model.encoder=test_resnet",
        "data.num_train=4",
        "data.train_transform_kwargs={scale_range: [1.0, 1.0], rotation: 0.0, color_jitter: null, gamma: null}",
        "data.num_val=4",
        "data.image_size=[32, 32]",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        f"trainer.max_steps={STEPS}",
        "trainer.val_every_n_steps=null",
        "trainer.checkpoint_every_n_steps=10",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.precision=32-true",
        "schedule.warmup_steps=3",
        "schedule.warmup_ratio=0.1",
        "optim.lr=1e-3",
    ]
    if arch == "xnet":
        overrides.append("model.decoder=test_convnext")
    return overrides


def recipe(task: str, arch: str) -> str:
    return f"dense/synth_{'depth' if task == 'depth' else 'seg'}_{arch}"


def train_losses(run_dir) -> list[float]:
    with open(run_dir / "logs" / "csv" / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train each case once through ``predec train``."""
    root = tmp_path_factory.mktemp("runs")
    result = {}
    for task, arch in CASES:
        run_dir = root / f"{task}_{arch}"
        extra = ["trainer.channels_last=false"] if (task, arch) == ("depth", "fpn") else []  # the other layout
        rc = main(["train", "--config", recipe(task, arch), "--run-dir", str(run_dir), *tiny_overrides(arch), *extra])
        assert rc == 0
        result[task, arch] = run_dir
    return result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    scenes = SynthScenes(2, size=(40, 48), seed=5)
    paths = []
    for i in range(2):
        path = root / f"scene{i}.png"
        write_image(path, scenes[i]["image"].permute(1, 2, 0).numpy())
        paths.append(path)
    return paths


@pytest.mark.parametrize(("task", "arch"), CASES)
def test_train_lowers_loss_and_writes_run_dir(runs, task, arch):
    run_dir = runs[task, arch]
    losses = train_losses(run_dir)
    assert len(losses) == STEPS
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    for name in ("config.yaml", "checkpoints/last.ckpt", "model/config.json", "model/model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["step"] == STEPS and record["task"] == task
    names = ("abs_rel", "rmse", "d1", "silog") if task == "depth" else ("mIoU", "aAcc", "IoU")
    assert all(n in record["metrics"] for n in names)
    assert any((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(("task", "arch"), CASES)
def test_eval_writes_metrics_json(runs, tmp_path, task, arch):
    run_dir = runs[task, arch]
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    key = "abs_rel" if task == "depth" else "mIoU"
    assert math.isfinite(record["metrics"][key])
    assert record["metrics"][key] == pytest.approx(trained["metrics"][key], rel=1e-6)  # same weights, same data
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json"]  # no empty checkpoints/, logs/


@pytest.mark.parametrize(("task", "arch"), CASES)
def test_predict_writes_colour_and_raw_outputs(runs, images, tmp_path, task, arch):
    out = tmp_path / "pred"
    checkpoint = runs[task, arch] / ("model" if arch == "fpn" else "checkpoints/last.ckpt")
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, images), "--out", str(out), "--npy"]) == 0
    manifest = json.loads((out / "predictions.json").read_text())
    assert len(manifest["outputs"]) == 2
    if task == "depth":
        colour = Image.open(out / "scene0_depth.png")
        assert colour.mode == "RGB" and colour.size == (48, 40)
        raw = np.array(Image.open(out / "scene0_depth16.png"))
        metres = np.load(out / "scene0_depth.npy")
        assert raw.dtype == np.uint16 and metres.shape == (40, 48)
        np.testing.assert_allclose(raw / 1000.0, metres, atol=0.5e-3 + 1e-6)
        assert metres.min() > 0 and metres.max() <= 10.0
        assert Image.open(out / "scene0_depth_bar.png").size[0] > 48  # the map and its colour bar
        assert manifest["class_names"] is None
    else:
        labels = Image.open(out / "scene0_labels.png")
        assert labels.mode == "P" and labels.size == (48, 40)
        values = np.array(labels)
        logits = np.load(out / "scene0_logits.npy")
        assert logits.shape == (6, 40, 48)
        np.testing.assert_array_equal(values, logits.argmax(0))
        overlay = Image.open(out / "scene0_overlay.png")
        assert overlay.mode in ("RGB", "RGBA") and overlay.size[0] > 48  # the image and its legend
        from predec.data.synthetic import SCENE_CLASSES

        # A train checkpoint records its recipe (SynthScenes' classes); a model folder does not.
        names = list(SCENE_CLASSES) if "checkpoints" in str(checkpoint) else [f"class {k}" for k in range(6)]
        assert manifest["class_names"] == names and manifest["outputs"][0]["overlay"].endswith("scene0_overlay.png")


def test_eval_checkpoint_of_another_architecture_is_an_error(runs, capsys):
    checkpoint = runs["segmentation", "fpn"] / "checkpoints" / "last.ckpt"
    rc = main(["eval", "--checkpoint", str(checkpoint), "--config", "dense/synth_seg_xnet", *tiny_overrides("xnet")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "holds a 'fpn' model" in err and "model.arch: 'fpn' in the checkpoint, 'xnet' in the config" in err


def test_eval_depth_config_on_segmentation_checkpoint_is_an_error(runs, capsys):
    checkpoint = runs["segmentation", "fpn"] / "model"
    assert main(["eval", "--checkpoint", str(checkpoint), "--config", "dense/synth_depth_fpn"]) == 2
    assert "model.task: 'segmentation' in the checkpoint, 'depth' in the config" in capsys.readouterr().err


def test_cli_rejects_wrong_type_and_unknown_key(tmp_path, capsys):
    base = ["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(tmp_path / "r")]
    assert main([*base, "optim.lr=fast"]) == 2
    assert "'optim.lr': expected float, got str 'fast'" in capsys.readouterr().err
    assert main([*base, "trainer.max_step=3"]) == 2
    err = capsys.readouterr().err
    assert "Unknown config key 'trainer.max_step'" in err and "Did you mean 'max_steps'" in err
    assert "accelerator, devices, num_nodes" in err
    assert not (tmp_path / "r").exists()


def test_empty_evaluation_set_is_an_error(runs, tmp_path, capsys):
    checkpoint = runs["depth", "fpn"] / "checkpoints" / "last.ckpt"
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "e"), "data.num_val=0"]) == 2
    assert "is empty" in capsys.readouterr().err


def test_predict_unreadable_image_names_the_file(runs, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    rc = main(["predict", "--checkpoint", str(runs["depth", "fpn"] / "model"), str(bad), "--out", str(tmp_path / "p")])
    assert rc == 2
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("task", "options"),
    [
        ("segmentation", ["eval.scales=[0.5, 1.0]", "eval.flip=true"]),
        (
            "depth",
            [
                "eval.flip=true",
                "eval.resize=[64, 64]",
                "eval.mode=slide",
                "eval.crop_size=[32, 32]",
                "eval.stride=[16, 16]",
            ],
        ),
    ],
)
def test_eval_with_test_time_options(runs, tmp_path, task, options):
    checkpoint = runs[task, "fpn"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(out), *options]) == 0
    record = json.loads((out / "metrics.json").read_text())
    key = "abs_rel" if task == "depth" else "mIoU"
    assert math.isfinite(record["metrics"][key])
    saved = (out / "config.yaml").read_text()
    assert "flip: true" in saved


def test_default_precision_follows_the_hardware(monkeypatch):
    from predec.engine import trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    assert trainer.default_precision("cpu") == "32-true"
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)
    assert trainer.default_precision("cpu") == "bf16-mixed"
    assert trainer.resolve_precision(load_config(None, ["trainer.precision=16-mixed"]).trainer) == "16-mixed"


def test_eval_depth_checkpoint_with_another_depth_range_is_an_error(runs, capsys):
    """The depth head's range scales its output: evaluating with another max_depth would report other depths."""
    checkpoint = runs["depth", "fpn"] / "checkpoints" / "last.ckpt"
    assert main(["eval", "--checkpoint", str(checkpoint), "model.max_depth=15.0"]) == 2
    assert "model.max_depth: 10.0 in the checkpoint, 15.0 in the config" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_predict_refuses_a_missing_device_and_an_unknown_colormap_in_one_line(runs, images, tmp_path, capsys):
    checkpoint = str(runs["depth", "fpn"] / "model")
    common = ["predict", "--checkpoint", checkpoint, str(images[0]), "--out", str(tmp_path / "p")]
    assert main([*common, "--device", "cuda"]) == 2
    assert "--device 'cuda': this machine has 0 CUDA device(s); use --device cpu or auto." in capsys.readouterr().err
    assert main([*common, "--device", "tpu9"]) == 2
    assert "--device 'tpu9' is not a device" in capsys.readouterr().err
    assert main([*common, "--colormap", "magmaa"]) == 2
    assert "--colormap 'magmaa' is not a matplotlib colormap. Did you mean magma" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_run_directory_that_is_a_file_is_one_line_with_exit_2(tmp_path, capsys):
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    code = main(["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(blocker), *tiny_overrides("fpn")])
    err = capsys.readouterr().err
    assert code == 2 and f"predec train: error: The run directory {str(blocker)!r} is a file" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_eval_predict_and_export_refuse_a_checkpoint_with_non_finite_weights(runs, images, tmp_path, capsys):
    from predec.engine.checkpoint import AtomicCheckpointIO, read_checkpoint

    checkpoint = read_checkpoint(runs["segmentation", "fpn"] / "checkpoints" / "last.ckpt")
    name = next(k for k in checkpoint["state_dict"] if k.endswith("running_var"))
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], float("inf"))
    poisoned = tmp_path / "poisoned.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint, poisoned)
    for argv in (
        ["eval", "--checkpoint", str(poisoned), "--out", str(tmp_path / "eval")],
        ["predict", "--checkpoint", str(poisoned), str(images[0]), "--out", str(tmp_path / "pred")],
        ["export", "--checkpoint", str(poisoned), "--onnx", str(tmp_path / "m.onnx"), "--size", "32", "32"],
    ):
        assert main(argv) == 2, argv[0]
        assert f"holds non-finite weights (NaN or Inf in {name.removeprefix('model.')})" in capsys.readouterr().err


def test_predict_refuses_an_image_above_max_size_and_suggests_a_resize(runs, tmp_path, capsys):
    big = tmp_path / "big.png"
    write_image(big, np.zeros((400, 600, 3), dtype=np.uint8))
    checkpoint = str(runs["depth", "fpn"] / "model")
    argv = ["predict", "--checkpoint", checkpoint, str(big), "--out", str(tmp_path / "p"), "--max-size", "256"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "big.png is 400×600 px, above --max-size 256" in err and "Pass --resize 171 256" in err
    assert main([*argv, "--resize", "64", "96"]) == 0


def test_eval_takes_no_output_location_or_launch_settings_from_a_checkpoint(runs, tmp_path, monkeypatch, capsys):
    """A crafted checkpoint recipe (name with ../.., output_dir elsewhere, trainer.num_nodes=2) cannot choose where
    eval writes or make it wait for other nodes."""
    from predec.engine.checkpoint import AtomicCheckpointIO, read_checkpoint

    checkpoint = read_checkpoint(runs["segmentation", "fpn"] / "checkpoints" / "last.ckpt")
    recipe = checkpoint["hyper_parameters"]["config"]
    outside = tmp_path / "outside"
    recipe.update(name="../../escaped", output_dir=str(outside))
    recipe["trainer"] = {**recipe["trainer"], "num_nodes": 2, "devices": 2, "strategy": "ddp"}
    crafted = tmp_path / "downloads" / "crafted.ckpt"
    crafted.parent.mkdir()
    AtomicCheckpointIO().save_checkpoint(checkpoint, crafted)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(crafted)]) == 0, capsys.readouterr().err
    assert not outside.exists() and not (tmp_path.parent / "escaped-eval").exists()
    written = json.loads((tmp_path / "runs" / "escaped-eval" / "metrics.json").read_text())
    assert written["world_size"] == 1


def test_output_paths_of_the_wrong_kind_are_one_line_with_exit_2(runs, images, tmp_path, capsys):
    """predict --out naming a file, export --onnx naming a directory or a path through a file: exit 2, one line."""
    model = str(runs["segmentation", "fpn"] / "model")
    a_file, a_dir = tmp_path / "a_file", tmp_path / "a_dir"
    a_file.write_text("x")
    a_dir.mkdir()
    cases = (
        (["predict", "--checkpoint", model, str(images[0]), "--out", str(a_file)], f"--out {a_file} is a file"),
        (["export", "--checkpoint", model, "--onnx", str(a_dir)], f"--onnx {a_dir} is a directory"),
        (["export", "--checkpoint", model, "--onnx", str(a_file / "m.onnx")], str(a_file)),
    )
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"predec {argv[0]}: error: ") and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert a_file.read_text() == "x" and not any(a_dir.iterdir())


def test_predict_with_a_missing_image_stops_before_predicting_any(runs, images, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["predict", "--checkpoint", str(runs["segmentation", "fpn"] / "model"), str(images[0]), "nope.png"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "predec predict: error: 1 of the images not found: nope.png." in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

"""`predec data synth` writes the synthetic sets in the NYU, VOC and image-folder layouts; readers load them back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predec.cli import main
from predec.data import (
    SCENE_CLASSES,
    ClassificationFolder,
    NYUDepthV2,
    PascalVOC,
    object_classes,
    render_object,
    render_scene,
)

SIZE = (24, 32)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    argv = ["data", "synth", "--out", str(out), "--num", "5", "--size", *map(str, SIZE), "--seed", "3"]
    argv += ["--num-objects", "10", "--object-size", "16", "--val-fraction", "0.2"]
    assert main(argv) == 0
    return out


def test_synth_round_trips_through_the_nyu_reader(synth_dir: Path) -> None:
    train = NYUDepthV2(synth_dir / "nyu", "train.txt")
    test = NYUDepthV2(synth_dir / "nyu", "test.txt")
    assert (len(train), len(test)) == (4, 1)
    for dataset, offset in ((train, 0), (test, 4)):
        for index in range(len(dataset)):
            scene = render_scene(3, offset + index, SIZE)
            sample = dataset[index]
            np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), scene.image)  # lossless PNG
            depth = sample["depth"][0].numpy()
            assert np.abs(depth - scene.depth).max() <= 0.0005 + 1e-6  # 16-bit PNG in mm: half a unit
            assert ((depth == 0) == (scene.depth == 0)).all()
            assert sample["meta"]["focal"] == pytest.approx(float(scene.intrinsics[0, 0]), rel=1e-7)


def test_synth_round_trips_through_the_voc_reader(synth_dir: Path) -> None:
    train = PascalVOC(synth_dir / "voc", "train", classes=SCENE_CLASSES)
    val = PascalVOC(synth_dir / "voc", "val", classes=SCENE_CLASSES)
    assert (len(train), len(val), len(PascalVOC(synth_dir / "voc", "trainval", classes=SCENE_CLASSES))) == (4, 1, 5)
    for dataset, offset in ((train, 0), (val, 4)):
        for index in range(len(dataset)):
            scene = render_scene(3, offset + index, SIZE)
            sample = dataset[index]
            np.testing.assert_array_equal(sample["labels"].numpy(), scene.labels)  # bit-exact
            np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), scene.image)


def test_synth_objects_round_trip_through_the_folder_reader(synth_dir: Path) -> None:
    classes = object_classes("shape")
    train = ClassificationFolder(synth_dir / "objects" / "train", classes=classes)
    val = ClassificationFolder(synth_dir / "objects" / "val", classes=classes)
    assert (len(train), len(val)) == (8, 2)
    for dataset in (train, val):
        for (path, _), (image, label) in zip(dataset.samples, dataset):
            expected_image, expected_label = render_object(3, int(path.stem), 16, "shape")
            assert label == expected_label
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected_image)
    record = json.loads((synth_dir / "synth.json").read_text())
    assert record["scene_classes"] == list(SCENE_CLASSES) and record["objects"]["classes"] == classes
    assert record["splits"] == {"train": 4, "val": 1}


def test_synth_refuses_to_overwrite_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--size", "8", "8"]
    assert main([*argv, "--num", "3", "--num-objects", "4"]) == 0
    assert main([*argv, "--num", "2", "--num-objects", "0"]) == 2
    assert "nyu already exists" in capsys.readouterr().err
    assert main([*argv, "--num", "2", "--num-objects", "0", "--overwrite"]) == 0
    assert len(NYUDepthV2(tmp_path / "nyu", "train.txt")) == 1
    assert not (tmp_path / "objects").exists()  # replaced: the new run wrote no objects


def test_synth_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "--out", str(tmp_path), "--num", "1"]) == 2
    assert "need at least 2 samples" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path), "--num", "4", "--val-fraction", "1.5"]) == 2
    assert "val_fraction=1.5" in capsys.readouterr().err

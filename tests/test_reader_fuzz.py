"""Every dataset reader × every kind of bad file: ``predec train`` / ``predec pretrain`` exit 2 with one line naming
the file, and never train on it silently.

Each case writes a tiny valid layout of the reader (4 samples at 32×32), breaks one file one way — truncated, empty,
not an image, the wrong mode (a 16-bit image, an RGB label, an 8-bit depth), the wrong size, the wrong unit or value
range — and runs a 2-step ``predec train`` on it; the pre-training folders (``UnlabeledFolder`` of the
self-supervised methods, ``ClassificationFolder`` of ``supervised``: training and held-out images) a 2-step
``predec pretrain``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predec.cli import main
from predec.data.io import write_depth, write_image, write_label

SIZE = (32, 32)
N = 4


def image(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def labels(seed: int, num_classes: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, SIZE, dtype=np.uint8)


def depth_m(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 8.0, SIZE).astype(np.float32)


# Each layout writes N samples under root and returns (overrides, {role: path of sample 0's file}).
def nyu(root: Path) -> tuple[list[str], dict[str, Path]]:
    lines = []
    for i in range(N):
        write_image(root / "scene" / f"rgb_{i}.png", image(i))
        write_depth(root / "scene" / f"sync_depth_{i}.png", depth_m(i), 1e-3)
        lines.append(f"/scene/rgb_{i}.png /scene/sync_depth_{i}.png 518.8")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    overrides = ["data.dataset=nyu", f"data.root={root}", "data.train_split=train.txt", "data.val_split=train.txt"]
    return overrides, {"image": root / "scene" / "rgb_0.png", "depth": root / "scene" / "sync_depth_0.png"}


def kitti(root: Path) -> tuple[list[str], dict[str, Path]]:
    lines = []
    for i in range(N):
        write_image(root / "raw" / "drive" / f"{i:010d}.png", image(i))
        write_depth(root / "gt" / "drive" / f"{i:010d}.png", depth_m(i), 1 / 256)
        lines.append(f"drive/{i:010d}.png drive/{i:010d}.png 721.5")
    (root / "eigen_train.txt").write_text("\n".join(lines) + "\n")
    overrides = ["data.dataset=kitti", f"data.root={root / 'raw'}", f"data.reader_kwargs={{gt_root: {root / 'gt'}}}"]
    overrides += [
        "data.train_split=" + str(root / "eigen_train.txt"),
        "data.val_split=" + str(root / "eigen_train.txt"),
    ]
    return overrides, {
        "image": root / "raw" / "drive" / "0000000000.png",
        "depth": root / "gt" / "drive" / "0000000000.png",
    }


def voc(root: Path) -> tuple[list[str], dict[str, Path]]:
    base = root / "VOCdevkit" / "VOC2012"
    for i in range(N):
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(i)).save(base / "JPEGImages" / f"2007_{i:06d}.jpg")
        write_label(base / "SegmentationClass" / f"2007_{i:06d}.png", labels(i, 21))
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(f"2007_{i:06d}" for i in range(N)))
    overrides = ["data.dataset=voc", f"data.root={root}", "data.train_split=train", "data.val_split=train"]
    paths = {"image": base / "JPEGImages" / "2007_000000.jpg", "label": base / "SegmentationClass" / "2007_000000.png"}
    return [*overrides, "model.num_classes=21"], paths


def cityscapes(root: Path) -> tuple[list[str], dict[str, Path]]:
    for i in range(N):
        name = f"aachen_{i:06d}_000019"
        write_image(root / "leftImg8bit" / "train" / "aachen" / f"{name}_leftImg8bit.png", image(i))
        path = root / "gtFine" / "train" / "aachen" / f"{name}_gtFine_labelTrainIds.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels(i, 19)).save(path)
    name = "aachen_000000_000019"
    paths = {
        "image": root / "leftImg8bit" / "train" / "aachen" / f"{name}_leftImg8bit.png",
        "label": root / "gtFine" / "train" / "aachen" / f"{name}_gtFine_labelTrainIds.png",
    }
    overrides = ["data.dataset=cityscapes", f"data.root={root}", "data.train_split=train", "data.val_split=train"]
    return [*overrides, "model.num_classes=19"], paths


def ade20k(root: Path) -> tuple[list[str], dict[str, Path]]:
    base = root / "ADEChallengeData2016"
    for i in range(N):
        (base / "images" / "training").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(i)).save(base / "images" / "training" / f"ADE_train_{i:08d}.jpg")
        path = base / "annotations" / "training" / f"ADE_train_{i:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels(i, 151)).save(path)
    paths = {
        "image": base / "images" / "training" / "ADE_train_00000000.jpg",
        "label": base / "annotations" / "training" / "ADE_train_00000000.png",
    }
    overrides = ["data.dataset=ade20k", f"data.root={root}", "data.train_split=training", "data.val_split=training"]
    return [*overrides, "model.num_classes=150"], paths


LAYOUTS: dict[str, tuple[Callable, str]] = {
    "nyu": (nyu, "dense/synth_depth_fpn"),
    "kitti": (kitti, "dense/synth_depth_fpn"),
    "voc": (voc, "dense/synth_seg_fpn"),
    "cityscapes": (cityscapes, "dense/synth_seg_fpn"),
    "ade20k": (ade20k, "dense/synth_seg_fpn"),
}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def wrong_size(path: Path) -> None:  # a valid file of another size than its partner
    Image.open(path).resize((40, 24)).save(path, format=Image.open(path).format)


def rgb_label(path: Path) -> None:
    Image.fromarray(image(9)).save(path, format="PNG")


def label_out_of_range(path: Path) -> None:
    Image.fromarray(np.full(SIZE, 200, np.uint8)).save(path, format="PNG")


def depth_8bit(path: Path) -> None:
    Image.fromarray(np.full(SIZE, 50, np.uint8)).save(path, format="PNG")


def depth_times_ten(path: Path) -> None:
    data = np.asarray(Image.open(path)).astype(np.uint32) * 10
    Image.fromarray(np.minimum(data, 65535).astype(np.uint16)).save(path, format="PNG")


def image_16bit(path: Path) -> None:  # a depth map where an image belongs: as RGB it would clip to almost white
    Image.fromarray(np.full(SIZE, 3000, np.uint16)).save(path, format="PNG")


def not_an_image(path: Path) -> None:
    path.write_text("not an image\n")


CASES = [
    (reader, role, corruption)
    for reader in LAYOUTS
    for role, corruptions in [
        ("image", (truncate, empty, wrong_size, image_16bit)),
        ("label", (truncate, empty, rgb_label, label_out_of_range)),
        ("depth", (truncate, empty, depth_8bit, depth_times_ten)),
    ]
    for corruption in corruptions
    if (role == "depth") == (LAYOUTS[reader][1].endswith("depth_fpn")) or role == "image"
]


@pytest.mark.parametrize(("reader", "role", "corruption"), CASES, ids=[f"{r}-{o}-{c.__name__}" for r, o, c in CASES])
def test_a_bad_file_is_exit_2_and_one_line_naming_it(tmp_path, capsys, reader, role, corruption):
    layout, recipe = LAYOUTS[reader]
    overrides, paths = layout(tmp_path / reader)
    corruption(paths[role])
    argv = ["train", "--config", recipe, "--run-dir", str(tmp_path / "run"), "model.encoder=test_resnet", *overrides]
    argv += ["data.crop_size=[32, 32]", "data.batch_size=2", "data.eval_batch_size=2", "trainer.max_steps=2"]
    argv += ["schedule.warmup_steps=1", "trainer.progress_bar=false", "trainer.precision=32-true"]
    code = main(argv)
    # Exit 2 is the CLI's caught user error: never a silent training (0) nor an uncaught traceback (it would raise
    # here). Lightning's log lines may come first; the command's own lines start with "predec ".
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predec ")]
    assert len(lines) == 1 and lines[0].startswith("predec train: error: "), lines
    assert str(paths[role]) in lines[0], lines[0]


# ------------------------------------------------------------------------ pre-training folders (predec pretrain)
def unlabeled(root: Path) -> tuple[list[str], dict[str, Path]]:
    for i in range(N):
        (root / "sub").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(i)).save(root / "sub" / f"img_{i}.jpg")
    return ["data.dataset=folder", f"data.root={root}"], {"image": root / "sub" / "img_0.jpg"}


def classes(root: Path) -> tuple[list[str], dict[str, Path]]:
    for split, count in (("train", N // 2), ("val", 1)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_image(root / split / name / f"{i}.png", image(i))
    overrides = ["data.dataset=folder", f"data.root={root / 'train'}", f"data.val_root={root / 'val'}"]
    return [*overrides, "data.reader_kwargs={}"], {
        "image": root / "train" / "cat" / "0.png",
        "val image": root / "val" / "cat" / "0.png",
    }


# reader: (layout, recipe, roles, the weights file a finished run writes)
PRETRAIN_LAYOUTS: dict[str, tuple[Callable, str, tuple[str, ...], str]] = {
    "unlabeled_folder": (unlabeled, "pretrain/synth_slotcon", ("image",), "weights.safetensors"),
    "classification_folder": (classes, "pretrain/synth_supervised", ("image", "val image"), "classifier.safetensors"),
}
PRETRAIN_CASES = [
    (reader, role, corruption)
    for reader, (_, _, roles, _) in PRETRAIN_LAYOUTS.items()
    for role in roles
    for corruption in (truncate, empty, not_an_image, image_16bit)
]


@pytest.mark.parametrize(
    ("reader", "role", "corruption"),
    PRETRAIN_CASES,
    ids=[f"{r}-{o.replace(' ', '_')}-{c.__name__}" for r, o, c in PRETRAIN_CASES],
)
def test_a_bad_pretraining_image_is_exit_2_and_one_line_naming_it(tmp_path, capsys, reader, role, corruption):
    layout, recipe, _, weights = PRETRAIN_LAYOUTS[reader]
    overrides, paths = layout(tmp_path / reader)
    corruption(paths[role])
    run_dir = tmp_path / "run"
    argv = ["pretrain", "--config", recipe, "--run-dir", str(run_dir), "model.encoder=test_resnet", *overrides]
    argv += ["ssl.num_prototypes=8", "ssl.hidden_dim=32", "ssl.out_dim=16", "data.view_size=32"]
    argv += ["data.batch_size=2", "data.eval_batch_size=2", "trainer.max_steps=2", "schedule.warmup_steps=1"]
    argv += ["trainer.progress_bar=false", "trainer.precision=32-true"]
    code = main(argv)  # 4 training images, 2 steps of 2: every image is read; the held-out ones after training
    assert code == 2 and not (run_dir / weights).exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predec ")]
    assert len(lines) == 1 and lines[0].startswith("predec pretrain: error: "), lines
    assert str(paths[role]) in lines[0], lines[0]

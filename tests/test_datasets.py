"""Dataset readers on tiny trees written in the real layouts: contents, label conversions, depth scales, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from predec.data import (
    ADE20K,
    CITYSCAPES_CLASSES,
    VOC_CLASSES,
    Cityscapes,
    ClassificationFolder,
    DataError,
    Depth,
    KITTIEigen,
    NYUDepthV2,
    PascalVOC,
    UnlabeledFolder,
)
from predec.data.io import read_depth, read_image, read_label, write_depth, write_image, write_label

H, W = 16, 24


def random_image(seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def random_labels(seed: int, num_classes: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, num_classes, size, dtype=np.uint8)
    labels[0, :3] = 255
    return labels


def write_png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


def write_truncated_png(path: Path, seed: int = 0) -> None:
    write_image(path, random_image(seed))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def as_numpy_image(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------------------------------- NYU / KITTI
def make_nyu(root: Path, n: int = 3) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """BTS layout: lines '/scene/rgb_i.jpg /scene/sync_depth_i.png focal' (leading '/' relative to the root)."""
    images, depths, lines = [], [], []
    for i in range(n):
        image, depth_mm = random_image(i), np.random.default_rng(10 + i).integers(0, 10000, (H, W))
        depth_mm[0, 0] = 0
        write_image(root / "kitchen_0001" / f"rgb_{i:05d}.png", image)
        write_png16(root / "kitchen_0001" / f"sync_depth_{i:05d}.png", depth_mm)
        lines.append(f"/kitchen_0001/rgb_{i:05d}.png /kitchen_0001/sync_depth_{i:05d}.png 518.8579")
        images.append(image)
        depths.append(depth_mm)
    split = root / "train.txt"
    split.write_text("# comment\n" + "\n".join(lines) + "\n\n")
    return split, images, depths


def test_nyu_reads_images_depth_in_millimetres_and_focal(tmp_path: Path) -> None:
    split, images, depths = make_nyu(tmp_path)
    dataset = NYUDepthV2(tmp_path, split)
    assert len(dataset) == 3
    sample = dataset[1]
    assert isinstance(sample["image"], tv_tensors.Image) and sample["image"].dtype == torch.uint8
    np.testing.assert_array_equal(as_numpy_image(sample["image"]), images[1])
    assert isinstance(sample["depth"], Depth) and sample["depth"].shape == (1, H, W)
    np.testing.assert_allclose(sample["depth"][0].numpy(), depths[1] / 1000.0, rtol=1e-6)
    assert sample["depth"][0, 0, 0] == 0  # invalid stays 0
    assert sample["meta"]["focal"] == pytest.approx(518.8579) and sample["meta"]["dataset"] == "nyu"
    assert "labels" not in sample
    assert NYUDepthV2(tmp_path, "train.txt").items == dataset.items  # split file relative to the root
    assert "NYUDepthV2(" in repr(dataset) and "samples=3" in repr(dataset)


def test_nyu_transform_is_applied_to_the_sample_dict(tmp_path: Path) -> None:
    split, _, _ = make_nyu(tmp_path, n=1)
    dataset = NYUDepthV2(tmp_path, split, transform=lambda sample: {**sample, "seen": True})
    assert dataset[0]["seen"] and "transform=" in repr(dataset)


def test_kitti_depth_scale_gt_root_and_missing_ground_truth(tmp_path: Path) -> None:
    raw, gt = tmp_path / "raw", tmp_path / "gt"
    write_image(raw / "2011_09_26/drive_0001_sync/image_02/data/0000000001.png", random_image(0))
    write_image(raw / "2011_09_26/drive_0001_sync/image_02/data/0000000002.png", random_image(1))
    depth = np.full((H, W), 5 * 256)
    depth[:, 0] = 0
    write_png16(gt / "drive_0001_sync/proj_depth/groundtruth/image_02/0000000001.png", depth)
    split = tmp_path / "eigen_test.txt"
    split.write_text(
        "2011_09_26/drive_0001_sync/image_02/data/0000000001.png "
        "drive_0001_sync/proj_depth/groundtruth/image_02/0000000001.png 721.5377\n"
        "2011_09_26/drive_0001_sync/image_02/data/0000000002.png None 721.5377\n"
    )
    dataset = KITTIEigen(raw, split, gt_root=gt)
    assert len(dataset) == 1 and dataset.skipped_without_depth == 1
    depth_m = dataset[0]["depth"][0]
    assert depth_m[0, 1] == 5.0 and depth_m[0, 0] == 0.0  # 1/256 m per unit
    assert dataset[0]["meta"]["focal"] == pytest.approx(721.5377)
    assert "skipped_without_depth=1" in repr(dataset)
    kept = KITTIEigen(raw, split, gt_root=gt, keep_without_depth=True)
    assert len(kept) == 2 and "depth" not in kept[1] and "depth" in kept[0]


def test_kitti_kb_crop_takes_the_bottom_centre(tmp_path: Path) -> None:
    height, width = 375, 1242
    image = random_image(3, (height, width))
    depth = np.random.default_rng(4).integers(0, 20000, (height, width))
    write_image(tmp_path / "img.png", image)
    write_png16(tmp_path / "gt.png", depth)
    (tmp_path / "split.txt").write_text("img.png gt.png 721.5\n")
    sample = KITTIEigen(tmp_path, "split.txt", kb_crop=True)[0]
    top, left = height - 352, (width - 1216) // 2
    assert sample["image"].shape == (3, 352, 1216) and sample["depth"].shape == (1, 352, 1216)
    np.testing.assert_array_equal(as_numpy_image(sample["image"]), image[top:, left : left + 1216])
    np.testing.assert_allclose(sample["depth"][0].numpy(), depth[top:, left : left + 1216] / 256.0)
    assert sample["meta"]["crop_offset"] == (top, left)
    write_image(tmp_path / "small.png", random_image(0))
    write_png16(tmp_path / "small_gt.png", np.ones((H, W)))
    (tmp_path / "small.txt").write_text("small.png small_gt.png 721.5\n")
    with pytest.raises(DataError, match=r"small\.png.*smaller than the KB crop"):
        KITTIEigen(tmp_path, "small.txt", kb_crop=True)[0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/kitchen_0001/rgb_00000.png /kitchen_0001/nowhere.png 518.8", r"line 2: depth .*nowhere\.png not found"),
        ("/kitchen_0001/nowhere.png /kitchen_0001/sync_depth_00000.png 518.8", r"line 2: image .*nowhere\.png"),
        ("/kitchen_0001/rgb_00000.png 518.8", r"line 2: 2 columns, expected 3"),
        ("/kitchen_0001/rgb_00000.png /kitchen_0001/sync_depth_00000.png f", r"line 2: focal 'f' is not a number"),
    ],
)
def test_split_line_pointing_nowhere_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    split, _, _ = make_nyu(tmp_path, n=1)
    bad = tmp_path / "bad.txt"
    bad.write_text(split.read_text().splitlines()[1] + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"bad\.txt, {message}"):
        NYUDepthV2(tmp_path, bad)


def test_empty_or_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: split file lists no samples"):
        NYUDepthV2(tmp_path, "empty.txt")
    with pytest.raises(DataError, match=r"missing\.txt: split file not found"):
        NYUDepthV2(tmp_path, "missing.txt")
    with pytest.raises(DataError, match=r"directory not found"):
        NYUDepthV2(tmp_path / "nowhere", "x.txt")


def test_depth_png_of_wrong_bit_depth_is_rejected(tmp_path: Path) -> None:
    make_nyu(tmp_path, n=1)
    Image.fromarray(np.full((H, W), 200, np.uint8)).save(tmp_path / "kitchen_0001" / "sync_depth_00000.png")
    with pytest.raises(DataError, match=r"sync_depth_00000\.png: depth PNG is 8-bit; expected a 16-bit"):
        NYUDepthV2(tmp_path, "train.txt")[0]


def test_image_and_depth_of_different_sizes(tmp_path: Path) -> None:
    make_nyu(tmp_path, n=1)
    write_png16(tmp_path / "kitchen_0001" / "sync_depth_00000.png", np.ones((H + 1, W)))
    with pytest.raises(DataError, match=r"sync_depth_00000\.png: size 24x17 .* differs from its image .*rgb_00000"):
        NYUDepthV2(tmp_path, "train.txt")[0]


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_unreadable_or_truncated_image(tmp_path: Path, kind: str) -> None:
    make_nyu(tmp_path, n=1)
    path = tmp_path / "kitchen_0001" / "rgb_00000.png"
    if kind == "truncated":
        write_truncated_png(path)
    else:
        path.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match=r"rgb_00000\.png: unreadable or truncated image"):
        NYUDepthV2(tmp_path, "train.txt")[0]


# ------------------------------------------------------------------------------------------------------------- VOC
def make_voc(root: Path, ids: list[str], *, augmented: bool = False, classes: int = 21) -> dict[str, np.ndarray]:
    voc = root / "VOCdevkit" / "VOC2012"
    labels = {}
    for k, image_id in enumerate(ids):
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image(k)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        labels[image_id] = random_labels(k, classes)
        if augmented:  # SBD-converted labels are plain grayscale PNGs
            path = voc / "SegmentationClassAug" / f"{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels[image_id]).save(path)
        else:
            write_label(voc / "SegmentationClass" / f"{image_id}.png", labels[image_id])
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / ("train_aug.txt" if augmented else "train.txt")).write_text("\n".join(ids) + "\n")
    return labels


def test_voc_palette_labels_read_as_indices(tmp_path: Path) -> None:
    labels = make_voc(tmp_path, ["2007_000032", "2007_000039"])
    assert Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png").mode == "P"
    dataset = PascalVOC(tmp_path, "train")
    assert len(dataset) == 2 and dataset.classes == VOC_CLASSES and len(VOC_CLASSES) == 21
    sample = dataset[1]
    assert isinstance(sample["labels"], tv_tensors.Mask) and sample["labels"].dtype == torch.int64
    np.testing.assert_array_equal(sample["labels"].numpy(), labels["2007_000039"])
    jpeg = np.asarray(Image.open(tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000039.jpg").convert("RGB"))
    np.testing.assert_array_equal(as_numpy_image(sample["image"]), jpeg)
    assert "depth" not in sample and sample["meta"]["dataset"] == "voc"
    assert len(PascalVOC(tmp_path / "VOCdevkit" / "VOC2012", "train")) == 2  # the VOC2012 directory itself
    assert "PascalVOC(" in repr(dataset) and "classes=21" in repr(dataset)


def test_voc_sbd_augmented(tmp_path: Path) -> None:
    labels = make_voc(tmp_path, ["2008_000001"], augmented=True)
    dataset = PascalVOC(tmp_path, "train_aug", augmented=True)
    np.testing.assert_array_equal(dataset[0]["labels"].numpy(), labels["2008_000001"])


def test_voc_label_values_outside_the_class_range(tmp_path: Path) -> None:
    make_voc(tmp_path, ["a"], classes=21)
    label = read_label(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/a.png")
    label[2, 2], label[3, 3] = 21, 254
    write_label(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/a.png", label)
    with pytest.raises(DataError, match=r"a\.png: label values 21, 254 are outside the class range 0\.\.20"):
        PascalVOC(tmp_path, "train")[0]
    with pytest.raises(DataError, match=r"outside the class range 0\.\.5"):  # a custom class list
        PascalVOC(tmp_path, "train", classes=("floor", "wall", "sphere", "box", "cylinder", "cone"))[0]


def test_voc_missing_label_names_split_line(tmp_path: Path) -> None:
    make_voc(tmp_path, ["a", "b"])
    (tmp_path / "VOCdevkit/VOC2012/SegmentationClass/b.png").unlink()
    with pytest.raises(DataError, match=r"train\.txt, line 2: label .*b\.png not found"):
        PascalVOC(tmp_path, "train")
    with pytest.raises(DataError, match=r"val\.txt: split file not found"):
        PascalVOC(tmp_path, "val")


def test_voc_image_and_label_of_different_sizes(tmp_path: Path) -> None:
    make_voc(tmp_path, ["a"])
    write_label(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/a.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DataError, match=r"a\.png: size 26x16 .*differs from its image"):
        PascalVOC(tmp_path, "train")[0]


def test_colour_label_is_rejected(tmp_path: Path) -> None:
    make_voc(tmp_path, ["a"])
    write_image(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/a.png", random_image(0))
    with pytest.raises(DataError, match=r"a\.png: label image has mode 'RGB'"):
        PascalVOC(tmp_path, "train")[0]


# ------------------------------------------------------------------------------------------------------ Cityscapes
def make_cityscapes(root: Path, split: str, label_type: str, labels: list[np.ndarray]) -> None:
    for k, label in enumerate(labels):
        city = "aachen" if k % 2 == 0 else "bochum"
        name = f"{city}_{k:06d}_000019"
        write_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", random_image(k))
        path = root / "gtFine" / split / city / f"{name}_gtFine_{label_type}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label.astype(np.uint8)).save(path)


def test_cityscapes_train_ids(tmp_path: Path) -> None:
    labels = [random_labels(k, 19) for k in range(3)]
    make_cityscapes(tmp_path, "val", "labelTrainIds", labels)
    dataset = Cityscapes(tmp_path, "val")
    assert len(dataset) == 3 and dataset.classes == CITYSCAPES_CLASSES and len(CITYSCAPES_CLASSES) == 19
    by_name = {Path(dataset[i]["meta"]["path"]).name: dataset[i]["labels"].numpy() for i in range(3)}
    np.testing.assert_array_equal(by_name["bochum_000001_000019_leftImg8bit.png"], labels[1])


def test_cityscapes_label_ids_are_mapped_to_train_ids(tmp_path: Path) -> None:
    ids = np.array([[7, 8, 26, 0, 33, 1, 24, 23]] * H, dtype=np.uint8)[:, :8]
    ids = np.tile(ids, (1, 3))
    make_cityscapes(tmp_path, "train", "labelIds", [ids])
    labels = Cityscapes(tmp_path, "train", label_type="labelIds")[0]["labels"].numpy()
    np.testing.assert_array_equal(labels[0, :8], [0, 1, 13, 255, 18, 255, 11, 10])


def test_cityscapes_bad_values_missing_label_and_empty_split(tmp_path: Path) -> None:
    label = random_labels(0, 19)
    label[1, 1] = 19
    make_cityscapes(tmp_path, "train", "labelTrainIds", [label])
    with pytest.raises(DataError, match=r"labelTrainIds\.png: label values 19 are outside the class range 0\.\.18"):
        Cityscapes(tmp_path, "train")[0]
    with pytest.raises(DataError, match=r"labelIds\.png: label not found"):
        Cityscapes(tmp_path, "train", label_type="labelIds")
    (tmp_path / "leftImg8bit" / "val").mkdir()
    (tmp_path / "gtFine" / "val").mkdir()
    with pytest.raises(DataError, match=r"val: no <city>/\*_leftImg8bit\.png images found"):
        Cityscapes(tmp_path, "val")


def test_cityscapes_label_ids_out_of_range(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, "train", "labelIds", [np.full((H, W), 34)])
    with pytest.raises(DataError, match=r"label values 34 are outside the class range 0\.\.33"):
        Cityscapes(tmp_path, "train", label_type="labelIds")[0]


# ---------------------------------------------------------------------------------------------------------- ADE20K
def make_ade(root: Path, split: str, labels: list[np.ndarray]) -> None:
    base = root / "ADEChallengeData2016"
    for k, label in enumerate(labels):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image(k)).save(base / "images" / split / f"ADE_{split}_{k:08d}.jpg")
        path = base / "annotations" / split / f"ADE_{split}_{k:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label.astype(np.uint8)).save(path)


def test_ade20k_reduces_the_zero_label(tmp_path: Path) -> None:
    raw = np.tile(np.array([0, 1, 2, 150, 75, 0], dtype=np.uint8), (H, W // 6))
    make_ade(tmp_path, "validation", [raw, raw])
    dataset = ADE20K(tmp_path, "validation")
    assert len(dataset) == 2 and len(dataset.classes) == 150 and dataset.classes[0] == "wall"
    labels = dataset[0]["labels"].numpy()
    np.testing.assert_array_equal(labels[0, :6], [255, 0, 1, 149, 74, 255])
    assert len(ADE20K(tmp_path / "ADEChallengeData2016", "validation")) == 2


def test_ade20k_bad_values_missing_annotation_and_empty(tmp_path: Path) -> None:
    make_ade(tmp_path, "training", [np.full((H, W), 151)])
    with pytest.raises(DataError, match=r"label values 151 are outside the class range 0\.\.150"):
        ADE20K(tmp_path, "training")[0]
    (tmp_path / "ADEChallengeData2016/annotations/training/ADE_training_00000000.png").unlink()
    with pytest.raises(DataError, match=r"ADE_training_00000000\.png: annotation not found"):
        ADE20K(tmp_path, "training")
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir()
    (tmp_path / "ADEChallengeData2016/annotations/validation").mkdir()
    with pytest.raises(DataError, match=r"validation: no \*\.jpg images found"):
        ADE20K(tmp_path, "validation")


# --------------------------------------------------------------------------------------------------------- folders
def test_unlabeled_folder_is_recursive_and_filters_extensions(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", random_image(0))
    write_image(tmp_path / "sub" / "deeper" / "b.JPG", random_image(1))
    write_image(tmp_path / "sub" / "c.webp", random_image(2))
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = UnlabeledFolder(tmp_path)
    assert [p.name for p in dataset.paths] == ["a.png", "c.webp", "b.JPG"]  # sorted by full path
    sample = dataset[0]
    assert set(sample) == {"image", "meta"} and sample["image"].shape == (3, H, W)
    np.testing.assert_array_equal(as_numpy_image(sample["image"]), random_image(0))
    assert "UnlabeledFolder(" in repr(dataset) and "samples=3" in repr(dataset)


def test_unlabeled_folder_empty_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty: no images with extensions"):
        UnlabeledFolder(tmp_path / "empty")
    write_truncated_png(tmp_path / "broken" / "x.png")
    with pytest.raises(DataError, match=r"x\.png: unreadable or truncated image"):
        UnlabeledFolder(tmp_path / "broken")[0]


def test_classification_folder(tmp_path: Path) -> None:
    for name, count in (("sphere", 2), ("box", 1), ("cone", 0)):
        (tmp_path / name).mkdir()
        for k in range(count):
            write_image(tmp_path / name / f"{k}.png", random_image(k))
    dataset = ClassificationFolder(tmp_path)
    assert dataset.classes == ["box", "cone", "sphere"] and len(dataset) == 3
    image, label = dataset[2]
    assert label == 2 and isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    pinned = ClassificationFolder(tmp_path, classes=["sphere", "box", "cone", "cylinder"])
    assert [label for _, label in pinned.samples] == [0, 0, 1]
    with pytest.raises(DataError, match=r"sub-folders \['sphere'\] are not among the given classes"):
        ClassificationFolder(tmp_path, classes=["box", "cone"])
    flipped = ClassificationFolder(tmp_path, transform=lambda image: image.flip(-1))
    torch.testing.assert_close(flipped[0][0], dataset[0][0].flip(-1))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images with extensions"):
        ClassificationFolder(tmp_path / "empty")


# --------------------------------------------------------------------------------------------------------------- io
def test_depth_png_round_trip_and_range(tmp_path: Path) -> None:
    depth = np.array([[0.0, 0.0004, 1.2344, 65.535], [np.nan, -1.0, np.inf, 3.0]], dtype=np.float32)
    write_depth(tmp_path / "d.png", depth, 1 / 1000)
    read = read_depth(tmp_path / "d.png", 1 / 1000)
    np.testing.assert_allclose(read, [[0, 0, 1.234, 65.535], [0, 0, 0, 3.0]], atol=1e-6)
    with pytest.raises(ValueError, match=r"exceeds what a 16-bit PNG holds"):
        write_depth(tmp_path / "far.png", np.array([[70.0]]), 1 / 1000)
    with pytest.raises(DataError, match=r"missing\.png: file not found"):
        read_image(tmp_path / "missing.png")

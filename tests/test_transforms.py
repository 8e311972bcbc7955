"""Joint dense transforms on the sample dict and SlotCon's two-view crop (geometry checked exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import max_pool2d
from torchvision import tv_tensors
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode

from predec.data import Depth, make_sample
from predec.data.sample import transform_sample
from predec.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomGamma,
    TwoViewCrop,
    eval_transform,
    train_transform,
)

H, W = 48, 64


def block_sample() -> dict:
    """Labels in 4 blocks (classes 0..3), image grey level 40 + 50·class, depth 1 + class metres, one invalid block."""
    labels = np.zeros((H, W), np.uint8)
    labels[: H // 2, W // 2 :], labels[H // 2 :, : W // 2], labels[H // 2 :, W // 2 :] = 1, 2, 3
    image = np.repeat((40 + 50 * labels)[..., None], 3, axis=2).astype(np.uint8)
    depth = (1.0 + labels).astype(np.float32)
    depth[:4, :4] = 0.0
    return make_sample(image, labels=labels, depth=depth, meta={"path": "x.png", "focal": 100.0})


NO_PHOTOMETRIC = {"color_jitter": None, "gamma": None, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_train_transform_keeps_image_labels_and_depth_aligned(task: str) -> None:
    transform = train_transform(task, (40, 56), scale_range=(0.6, 1.8), rotation=10.0, **NO_PHOTOMETRIC)
    for seed in range(10):
        torch.manual_seed(seed)
        out = transform(block_sample())
        image, labels, depth = out["image"], out["labels"], out["depth"]
        assert image.shape == (3, 40, 56) and image.dtype == torch.float32
        assert isinstance(labels, tv_tensors.Mask) and labels.dtype == torch.int64 and labels.shape == (40, 56)
        assert isinstance(depth, Depth) and depth.dtype == torch.float32 and depth.shape == (1, 40, 56)
        assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest: no new label values
        assert set(depth.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}  # valid and invalid never blended
        valid = labels != 255
        assert torch.equal(depth[0][valid & (depth[0] > 0)], 1.0 + labels[valid & (depth[0] > 0)].float())
        # away from block edges (label constant over a 7x7 window) the image shows its block's grey level
        window = labels[None, None].float()
        inner = max_pool2d(window, 7, 1, 3)[0, 0] == -max_pool2d(-window, 7, 1, 3)[0, 0]
        inner &= valid
        inner[:3], inner[-3:], inner[:, :3], inner[:, -3:] = False, False, False, False  # unseen beyond the crop
        expected = (40 + 50 * labels[inner]).float() / 255
        assert inner.sum() > 100
        torch.testing.assert_close(image[0][inner], expected, atol=2e-3, rtol=0)
        assert out["meta"] == {"path": "x.png", "focal": 100.0}


def test_crop_pads_labels_with_ignore_and_depth_with_invalid() -> None:
    transform = train_transform("depth", (H + 8, W + 8), rotation=0.0, hflip=0.0, **NO_PHOTOMETRIC)
    out = transform(block_sample())
    labels, depth = out["labels"], out["depth"][0]
    assert (labels == 255).sum() == (H + 8) * (W + 8) - H * W
    assert ((depth == 0) & (labels == 255)).sum() == (labels == 255).sum()
    assert (out["image"][:, labels == 255] == 0).all()


def test_hflip_flips_every_entry() -> None:
    transform = train_transform("segmentation", (H, W), scale_range=(1.0, 1.0), hflip=1.0, **NO_PHOTOMETRIC)
    sample = block_sample()
    out = transform(block_sample())
    assert torch.equal(out["labels"], sample["labels"].flip(-1))
    assert torch.equal(out["depth"], sample["depth"].flip(-1))
    torch.testing.assert_close(out["image"], sample["image"].flip(-1).float() / 255)


def test_photometric_augmentation_touches_the_image_only() -> None:
    transform = train_transform(
        "depth", (H, W), rotation=0.0, hflip=0.0, color_jitter=(0.5, 0.5, 0.5, 0.1), color_jitter_p=1.0
    )
    sample = block_sample()
    torch.manual_seed(0)
    out = transform(block_sample())
    assert torch.equal(out["labels"], sample["labels"]) and torch.equal(out["depth"], sample["depth"])
    plain = eval_transform()(block_sample())["image"]
    assert not torch.allclose(out["image"], plain)


def test_random_gamma_and_eval_normalisation() -> None:
    sample = block_sample()
    gamma = RandomGamma((2.0, 2.0), p=1.0)(sample)
    np.testing.assert_allclose(
        gamma["image"].numpy() / 255, (sample["image"].numpy() / 255) ** 2, atol=1 / 255
    )  # uint8 rounding
    assert torch.equal(gamma["labels"], sample["labels"])
    out = eval_transform()(block_sample())
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out["image"], (sample["image"].float() / 255 - mean) / std)
    assert torch.equal(out["labels"], sample["labels"]) and torch.equal(out["depth"], sample["depth"])


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_transform_sample_matches_the_whole_dict_transform_and_keeps_meta(task: str) -> None:
    sample = block_sample()
    sample["meta"]["intrinsics"] = [[100.0, 0.0, 31.5], [0.0, 100.0, 23.5], [0.0, 0.0, 1.0]]
    transform = train_transform(task, (32, 40))
    for seed in range(6):
        torch.manual_seed(seed)
        whole = transform(dict(sample))
        torch.manual_seed(seed)
        split = transform_sample(transform, dict(sample))
        assert set(split) == set(whole)
        for key in ("image", "labels", "depth"):
            assert type(split[key]) is type(whole[key]) and torch.equal(split[key], whole[key])
        assert split["meta"] is sample["meta"]
    assert transform_sample(None, sample) is sample


def test_train_transform_rejects_unknown_task() -> None:
    with pytest.raises(ValueError, match=r"task='detection': expected one of \('segmentation', 'depth'\)"):
        train_transform("detection", 32)


# --------------------------------------------------------------------------------------------------- two-view crop
def coordinate_image(height: int, width: int) -> torch.Tensor:
    """Channel 0 = x, channel 1 = y of each pixel centre (a linear ramp, reproduced exactly by bilinear resampling)."""
    ys, xs = torch.meshgrid(torch.arange(height) * 1.0, torch.arange(width) * 1.0, indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)])


def test_two_view_boxes_map_to_the_same_source_pixels() -> None:
    """roi_align of each view at its box (flipped back if flagged) gives the source coordinates of the overlap."""
    size, out_size = 32, 8
    image = coordinate_image(48, 64)
    crop = TwoViewCrop(
        size=size,
        scale=(0.2, 1.0),
        min_overlap=0.2,
        interpolation=InterpolationMode.BILINEAR,
        photometric=False,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    flips = set()
    for seed in range(30):
        torch.manual_seed(seed)
        (top1, left1, h1, w1), (top2, left2, h2, w2) = crop.crop_params(image)
        torch.manual_seed(seed)
        out = crop({"image": tv_tensors.Image(image)})
        flips.add((bool(out["flip1"]), bool(out["flip2"])))
        # the overlap in source pixel-edge coordinates, sampled at the centres of an out_size x out_size grid
        x1, x2 = max(left1, left2), min(left1 + w1, left2 + w2)
        y1, y2 = max(top1, top2), min(top1 + h1, top2 + h2)
        grid = (torch.arange(out_size) + 0.5) / out_size
        expected_x = (x1 + grid * (x2 - x1) - 0.5).expand(out_size, out_size)
        expected_y = (y1 + grid * (y2 - y1) - 0.5)[:, None].expand(out_size, out_size)
        for k in (1, 2):
            box = out[f"box{k}"] * size
            aligned = roi_align(out[f"view{k}"][None], [box[None]], (out_size, out_size), 1.0, -1, True)[0]
            if out[f"flip{k}"]:
                aligned = aligned.flip(-1)
            torch.testing.assert_close(aligned[0], expected_x, atol=0.25, rtol=0)  # within a quarter source pixel
            torch.testing.assert_close(aligned[1], expected_y, atol=0.25, rtol=0)
    assert flips == {(False, False), (False, True), (True, False), (True, True)}


def test_two_view_overlap_is_guaranteed_and_flip_mirrors_the_box() -> None:
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    plain = TwoViewCrop(size=16, min_overlap=0.3, hflip=0.0, photometric=False)
    flipped = TwoViewCrop(size=16, min_overlap=0.3, hflip=1.0, photometric=False)
    for seed in range(20):
        torch.manual_seed(seed)
        a = plain(image)
        torch.manual_seed(seed)
        b = flipped(image)
        box2 = a["box2"]
        assert (box2[2] - box2[0]) * (box2[3] - box2[1]) >= 0.3 - 1e-6  # overlap / area of view 2
        for k in (1, 2):
            x1, y1, x2, y2 = a[f"box{k}"]
            torch.testing.assert_close(b[f"box{k}"], torch.stack([1 - x2, y1, 1 - x1, y2]))
            torch.testing.assert_close(b[f"view{k}"], a[f"view{k}"].flip(-1))
            assert not a[f"flip{k}"] and b[f"flip{k}"]


def test_two_view_crop_with_slotcon_photometric_output_format() -> None:
    sample = make_sample(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    out = TwoViewCrop(size=24)(sample)
    assert list(out) == ["view1", "view2", "box1", "box2", "flip1", "flip2"]
    for k in (1, 2):
        assert out[f"view{k}"].shape == (3, 24, 24) and out[f"view{k}"].dtype == torch.float32
        assert out[f"box{k}"].shape == (4,) and out[f"box{k}"].dtype == torch.float32
        assert ((out[f"box{k}"] >= 0) & (out[f"box{k}"] <= 1)).all()
        assert out[f"flip{k}"].dtype == torch.bool and out[f"flip{k}"].shape == ()
    batch = torch.utils.data.default_collate([out, out])
    assert batch["view1"].shape == (2, 3, 24, 24) and batch["box1"].shape == (2, 4)
    with pytest.raises(TypeError, match=r"expects a uint8 image"):
        TwoViewCrop(size=24)(sample["image"].float())


def test_two_view_crop_raises_with_crop_parameters_when_no_overlap_is_possible() -> None:
    torch.manual_seed(0)
    crop = TwoViewCrop(size=8, scale=(0.01, 0.011), ratio=(1.0, 1.0), min_overlap=1.0, max_tries=3)
    with pytest.raises(RuntimeError, match=r"200x200 .*min_overlap=1\.0.*3x3 tries.*\(top, left, height, width\)"):
        crop(torch.zeros(3, 200, 200, dtype=torch.uint8))

"""Depth loss, metrics and crops against hand-computed values."""

import math

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from predec.tasks.depth import (
    DEPTH_METRIC_NAMES,
    DepthMetricAccumulator,
    depth_metrics,
    eigen_crop_mask,
    eigen_kitti_crop_mask,
    flip_average,
    garg_crop_mask,
    kb_crop,
    silog_loss,
)

LN2 = math.log(2.0)


def depth(values) -> torch.Tensor:
    """(H, W) nested list → (1, 1, H, W) float tensor."""
    return torch.tensor(values, dtype=torch.float64)[None, None]


# ---------------------------------------------------------------- SILog loss


def test_silog_hand_computed_two_pixels():
    pred, gt = depth([[2.0, 1.0]]), depth([[1.0, 1.0]])  # g = [ln 2, 0]
    bts = silog_loss(pred, gt, variant="bts", eps=0.0)
    adabins = silog_loss(pred, gt, variant="adabins", eps=0.0)
    # bts: mean(g²) − 0.85·mean(g)² = ln2²/2 − 0.85·ln2²/4; adabins: var_unbiased = ln2²/2, + 0.15·ln2²/4
    assert bts.item() == pytest.approx(10 * math.sqrt(0.5 - 0.2125) * LN2, rel=1e-6)
    assert adabins.item() == pytest.approx(10 * math.sqrt(0.5 + 0.0375) * LN2, rel=1e-6)


def test_silog_matches_papers_forms_on_random_data():
    torch.manual_seed(0)
    pred = torch.rand(2, 1, 6, 7) * 9 + 0.5
    gt = torch.rand(2, 1, 6, 7) * 9 + 0.5
    gt[0, 0, :2] = 0.0  # invalid pixels
    mask = gt > 1e-3
    g = torch.log(pred[mask] + 1e-3) - torch.log(gt[mask] + 1e-3)
    n = g.numel()
    adabins_paper = 10 * torch.sqrt(torch.var(g) + 0.15 * torch.pow(torch.mean(g), 2))  # AdaBins SILogLoss
    bts_paper = torch.sqrt((g**2).mean() - 0.85 * (g.mean() ** 2)) * 10.0  # BTS silog_loss
    adabins = silog_loss(pred, gt)
    bts = silog_loss(pred, gt, variant="bts")
    assert adabins.item() == pytest.approx(adabins_paper.item(), rel=1e-5)
    assert bts.item() == pytest.approx(bts_paper.item(), rel=1e-5)
    # documented relation: adabins² − bts² = scale² · var_biased(g) / (n − 1)
    var_biased = g.var(correction=0)
    assert (adabins**2 - bts**2).item() == pytest.approx((100 * var_biased / (n - 1)).item(), rel=1e-3)


def test_silog_ignores_invalid_and_out_of_range_pixels():
    pred = depth([[2.0, 1.0, 123.0, 7.0]])
    gt = depth([[1.0, 1.0, 0.0, 50.0]])  # 0 invalid; 50 ≥ max_depth 10
    reference = silog_loss(depth([[2.0, 1.0]]), depth([[1.0, 1.0]]))
    assert silog_loss(pred, gt, max_depth=10.0).item() == pytest.approx(reference.item(), rel=1e-6)


def test_silog_resizes_prediction_to_gt():
    pred = torch.full((1, 1, 2, 2), 3.0)
    gt = torch.rand(1, 1, 8, 8) + 1.0
    full = silog_loss(torch.full((1, 1, 8, 8), 3.0), gt)
    assert silog_loss(pred, gt).item() == pytest.approx(full.item(), rel=1e-6)


def test_silog_no_valid_pixel_is_zero_with_graph():
    pred = torch.rand(1, 1, 4, 4, requires_grad=True)
    loss = silog_loss(pred, torch.zeros(1, 1, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_silog_perfect_prediction_has_finite_gradient():
    gt = torch.rand(1, 1, 4, 4) + 1.0
    pred = gt.clone().requires_grad_(True)
    silog_loss(pred, gt).backward()
    assert torch.isfinite(pred.grad).all()


def test_silog_rejects_unknown_variant_and_bad_shape():
    with pytest.raises(ValueError, match="variant"):
        silog_loss(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), variant="mmseg")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        silog_loss(torch.ones(1, 2, 2), torch.ones(1, 1, 2, 2))


# ---------------------------------------------------------------- metrics


def test_depth_metrics_hand_computed():
    gt = depth([[1.0, 2.0], [4.0, 0.0]])  # the 0 is invalid
    pred = depth([[1.0, 1.0], [5.0, 7.0]])  # ratios 1, 2, 1.25 (1.25 is not < 1.25)
    m = depth_metrics(pred, gt, min_depth=1e-3, max_depth=10.0)
    e = [0.0, math.log(0.5), math.log(1.25)]
    expected = {
        "d1": 1 / 3,
        "d2": 2 / 3,
        "d3": 2 / 3,
        "abs_rel": (0 + 0.5 + 0.25) / 3,
        "sq_rel": (0 + 1 / 2 + 1 / 4) / 3,
        "rmse": math.sqrt(2 / 3),
        "rmse_log": math.sqrt(sum(v * v for v in e) / 3),
        "log10": (math.log10(2) + math.log10(1.25)) / 3,
        "silog": 100 * math.sqrt(sum(v * v for v in e) / 3 - (sum(e) / 3) ** 2),
    }
    for name, value in expected.items():
        assert m[name].shape == (1,)
        assert m[name].item() == pytest.approx(value, rel=1e-12), name
    assert m["valid_pixels"].tolist() == [3]


def test_depth_metrics_match_toolbox_formulas_with_crop():
    torch.manual_seed(1)
    gt = torch.rand(2, 1, 5, 6) * 12
    pred = torch.rand(2, 1, 5, 6) * 12
    crop = torch.zeros(5, 6, dtype=torch.bool)
    crop[1:4, 2:6] = True
    m = depth_metrics(pred, gt, min_depth=1e-3, max_depth=10.0, crop=crop)
    for b in range(2):
        keep = (gt[b, 0] > 1e-3) & (gt[b, 0] < 10.0) & crop
        g, p = gt[b, 0][keep].double(), pred[b, 0][keep].double().clamp(1e-3, 10.0)
        thresh = torch.maximum(g / p, p / g)
        err = torch.log(p) - torch.log(g)
        ref = {
            "d1": (thresh < 1.25).double().mean(),
            "abs_rel": torch.mean(torch.abs(g - p) / g),
            "sq_rel": torch.mean((g - p) ** 2 / g),
            "rmse": torch.sqrt(((g - p) ** 2).mean()),
            "rmse_log": torch.sqrt(((torch.log(g) - torch.log(p)) ** 2).mean()),
            "log10": torch.abs(torch.log10(g) - torch.log10(p)).mean(),
            "silog": torch.sqrt(torch.mean(err**2) - torch.mean(err) ** 2) * 100,
        }
        for name, value in ref.items():
            assert m[name][b].item() == pytest.approx(value.item(), rel=1e-9), name
        assert m["valid_pixels"][b].item() == int(keep.sum())


def test_depth_metrics_clamp_prediction_before_scoring():
    gt = depth([[5.0, 2.0]])
    pred = depth([[20.0, 0.0]])  # clamped to 10 and to 0.5 (min_depth)
    m = depth_metrics(pred, gt, min_depth=0.5, max_depth=10.0)
    assert m["abs_rel"].item() == pytest.approx((5 / 5 + 1.5 / 2) / 2)


def test_depth_metrics_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        depth_metrics(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 8, 8), min_depth=1e-3, max_depth=10)
    with pytest.raises(ValueError, match="NaN"):
        depth_metrics(torch.full((1, 1, 2, 2), math.nan), torch.ones(1, 1, 2, 2), min_depth=1e-3, max_depth=10)
    with pytest.raises(ValueError, match="crop"):
        depth_metrics(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), min_depth=1e-3, max_depth=10, crop="nyu")
    with pytest.raises(ValueError, match="480"):
        depth_metrics(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), min_depth=1e-3, max_depth=10, crop="eigen")
    with pytest.raises(ValueError, match="min_depth > 0"):
        DepthMetricAccumulator(min_depth=0.0, max_depth=10.0)
    with pytest.raises(ValueError, match="garg"):
        DepthMetricAccumulator(min_depth=1e-3, max_depth=80.0, crop="kitti")


def test_accumulator_averages_per_image_not_pooled_and_skips_empty_images():
    # image A: one valid pixel, abs_rel 1; image B: three valid pixels, abs_rel 0; image C: no valid pixel
    gt = torch.tensor([[[[5.0, 0.0, 0.0, 0.0]]], [[[1.0, 2.0, 3.0, 0.0]]], [[[0.0, 0.0, 0.0, 0.0]]]])
    pred = torch.tensor([[[[10.0, 1.0, 1.0, 1.0]]], [[[1.0, 2.0, 3.0, 1.0]]], [[[1.0, 1.0, 1.0, 1.0]]]])
    acc = DepthMetricAccumulator(min_depth=1e-3, max_depth=20.0)
    per_image = acc.update(pred, gt)
    assert math.isnan(per_image["abs_rel"][2].item())
    result = acc.compute()
    assert result["abs_rel"] == pytest.approx(0.5)  # pooled over pixels would be 0.25
    assert result["d1"] == pytest.approx(0.5)
    assert result["num_images"] == 2 and result["num_skipped"] == 1
    assert set(DEPTH_METRIC_NAMES) <= set(result)


def test_accumulator_state_merge_equals_single_pass():
    torch.manual_seed(2)
    gt, pred = torch.rand(4, 1, 3, 3) * 5, torch.rand(4, 1, 3, 3) * 5
    whole = DepthMetricAccumulator(min_depth=1e-3, max_depth=10.0)
    whole.update(pred, gt)
    first, second = (DepthMetricAccumulator(min_depth=1e-3, max_depth=10.0) for _ in range(2))
    first.update(pred[:1], gt[:1])
    second.update(pred[1:], gt[1:])
    reduced = {key: first.state()[key] + second.state()[key] for key in ("sums", "counts")}  # what all_reduce does
    first.load_state(reduced)
    assert first.compute() == pytest.approx(whole.compute(), rel=1e-12)
    second.merge(DepthMetricAccumulator(min_depth=1e-3, max_depth=10.0).state())  # adding an empty state
    third = DepthMetricAccumulator(min_depth=1e-3, max_depth=10.0)
    third.update(pred[:1], gt[:1])
    third.merge(second.state())
    assert third.compute() == pytest.approx(whole.compute(), rel=1e-12)


def test_empty_evaluation_raises():
    acc = DepthMetricAccumulator(min_depth=1e-3, max_depth=10.0)
    with pytest.raises(ValueError, match="Empty depth evaluation"):
        acc.compute()
    acc.update(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="2 images skipped"):
        acc.compute()


# ---------------------------------------------------------------- crops


def box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(row start, row stop, col start, col stop) of a mask, checking it is exactly that rectangle."""
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    assert int(mask.sum()) == (r1 - r0) * (c1 - c0)
    return r0, r1, c0, c1


def test_eigen_crop_bounds():
    mask = eigen_crop_mask(480, 640)
    assert mask.shape == (480, 640) and mask.dtype == torch.bool
    assert box(mask) == (45, 471, 41, 601)
    with pytest.raises(ValueError, match="480"):
        eigen_crop_mask(240, 320)


def test_garg_crop_bounds():
    # 375×1242: 0.40810811·375 = 153.04, 0.99189189·375 = 371.96, 0.03594771·1242 = 44.65, 0.96405229·1242 = 1197.35
    assert box(garg_crop_mask(375, 1242)) == (153, 371, 44, 1197)
    # KB-cropped 352×1216: 143.65, 349.15, 43.71, 1172.29
    assert box(garg_crop_mask(352, 1216)) == (143, 349, 43, 1172)


def test_eigen_kitti_crop_bounds():
    # 0.3324324·375 = 124.66, 0.91351351·375 = 342.57
    assert box(eigen_kitti_crop_mask(375, 1242)) == (124, 342, 44, 1197)


def test_kb_crop_tensor_pil_and_tv_tensor():
    image = torch.arange(375 * 1242).reshape(1, 375, 1242).expand(3, -1, -1)
    out = kb_crop(image)
    assert out.shape == (3, 352, 1216)
    # top = 375 − 352 = 23, left = (1242 − 1216) // 2 = 13
    assert out[0, 0, 0].item() == 23 * 1242 + 13
    assert out[0, -1, -1].item() == 374 * 1242 + 13 + 1215
    mask = kb_crop(tv_tensors.Mask(torch.zeros(1, 376, 1243)))
    assert isinstance(mask, tv_tensors.Mask) and mask.shape == (1, 352, 1216)
    pil = kb_crop(Image.new("RGB", (1242, 375)))
    assert pil.size == (1216, 352)
    with pytest.raises(ValueError, match="352"):
        kb_crop(torch.zeros(3, 300, 1242))


def test_flip_average():
    ramp = torch.arange(4.0).view(1, 1, 1, 4)

    def predict(x):  # not flip-equivariant
        return x * ramp

    x = torch.rand(2, 1, 3, 4)
    expected = x * (ramp + ramp.flip(-1)) / 2  # = x · 1.5
    torch.testing.assert_close(flip_average(predict, x), expected)

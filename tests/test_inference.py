"""Whole, sliding-window and multi-scale + flip inference on hand-checkable functions."""

import pytest
import torch
import torch.nn.functional as F

from predec.tasks.inference import (
    multiscale_flip_inference,
    scaled_size,
    slide_inference,
    sliding_windows,
    whole_inference,
)


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A position-independent 1×1 map 3 → 4 channels: slide and whole inference must agree exactly."""
    weight = torch.arange(12.0).view(4, 3, 1, 1) / 10 - 0.5
    return F.conv2d(x, weight)


def test_sliding_windows_and_count_map_hand_computed():
    boxes = sliding_windows(10, 5, crop=4, stride=3)
    # rows: grids = (10 − 4 + 2) // 3 + 1 = 3 → 0:4, 3:7, 6:10; cols: (5 − 4 + 2) // 3 + 1 = 2 → 0:4, then 1:5
    assert boxes == [(0, 4, 0, 4), (0, 4, 1, 5), (3, 7, 0, 4), (3, 7, 1, 5), (6, 10, 0, 4), (6, 10, 1, 5)]
    count = torch.zeros(10, 5)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    rows = torch.tensor([1, 1, 1, 2, 1, 1, 2, 1, 1, 1.0])
    cols = torch.tensor([1, 2, 2, 2, 1.0])
    torch.testing.assert_close(count, rows[:, None] * cols[None, :])
    assert sliding_windows(3, 3, crop=4, stride=2) == [(0, 3, 0, 3)]
    with pytest.raises(ValueError, match="uncovered"):
        sliding_windows(10, 10, crop=4, stride=5)


def test_slide_equals_whole_for_pointwise_fn():
    x = torch.rand(2, 3, 10, 13)
    sizes = []

    def fn(t):
        sizes.append(tuple(t.shape[-2:]))
        return pointwise(t)

    out = slide_inference(fn, x, crop=(4, 6), stride=(3, 4), num_outputs=4)
    torch.testing.assert_close(out, whole_inference(pointwise, x))
    assert set(sizes) == {(4, 6)}  # every window has the crop size
    assert len(sizes) == 3 * 3  # rows (10−4+2)//3+1 = 3, cols (13−6+3)//4+1 = 3


def test_slide_count_map_divides_overlaps():
    x = torch.rand(1, 3, 11, 9)
    out = slide_inference(lambda t: torch.ones(t.shape[0], 2, *t.shape[-2:]), x, crop=5, stride=2)
    torch.testing.assert_close(out, torch.ones(1, 2, 11, 9))  # sum / count = 1 everywhere covered once or more


def test_slide_pads_inputs_smaller_than_crop():
    def fn(t):
        assert t.shape[-2:] == (8, 8), "windows must have the crop size"
        return 2 * t

    x = torch.rand(1, 3, 5, 6)
    torch.testing.assert_close(slide_inference(fn, x, crop=8, stride=4), 2 * x)


def test_whole_inference_resizes_low_resolution_output():
    x = torch.rand(1, 3, 8, 12)
    out = whole_inference(lambda t: torch.full((1, 2, 2, 3), 0.5), x)
    assert out.shape == (1, 2, 8, 12)
    torch.testing.assert_close(out, torch.full((1, 2, 8, 12), 0.5))


def test_output_checks():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="expected 5"):
        slide_inference(pointwise, x, crop=4, stride=4, num_outputs=5)
    with pytest.raises(ValueError, match=r"\(B=1, C, h, w\)"):
        whole_inference(lambda t: t[0], x)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        whole_inference(pointwise, x[0])


def test_scaled_size_rounds_half_up():
    assert scaled_size(1024, 2048, 0.75) == (768, 1536)
    assert scaled_size(10, 13, 0.5) == (5, 7)  # 6.5 → 7
    assert scaled_size(5, 5, 0.5) == (3, 3)  # 2.5 → 3


def test_multiscale_flip_averages_softmax_probabilities():
    ramp = torch.linspace(-1.0, 1.0, 6).view(1, 1, 1, 6)

    def fn(t):  # not flip-equivariant: two classes with logits ±(x·ramp)
        y = t[:, :1] * ramp
        return torch.cat([y, -y], dim=1)

    x = torch.rand(2, 3, 4, 6)
    out = multiscale_flip_inference(fn, x, scales=(1.0,), flip=True)
    expected = (fn(x).softmax(1) + fn(x.flip(-1)).flip(-1).softmax(1)) / 2
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 4, 6))


def test_multiscale_resizes_inputs_and_outputs():
    seen = []
    constant = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1)

    def fn(t):
        seen.append(tuple(t.shape[-2:]))
        return constant.expand(t.shape[0], 3, *t.shape[-2:])

    x = torch.rand(1, 3, 10, 13)
    out = multiscale_flip_inference(fn, x, scales=(0.5, 1.0, 1.5), flip=True)
    assert seen == [(5, 7), (5, 7), (10, 13), (10, 13), (15, 20), (15, 20)]
    torch.testing.assert_close(out, constant.softmax(1).expand(1, 3, 10, 13))


def test_multiscale_slide_mode():
    x = torch.rand(1, 3, 9, 11)
    out = multiscale_flip_inference(pointwise, x, scales=(1.0,), flip=False, mode="slide", crop=4, stride=3)
    torch.testing.assert_close(out, pointwise(x).softmax(1))
    with pytest.raises(ValueError, match="crop and stride"):
        multiscale_flip_inference(pointwise, x, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        multiscale_flip_inference(pointwise, x, mode="sliding")

"""Segmentation loss and mmseg-style metrics against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from predec.tasks.segmentation import SegMetricAccumulator, cross_entropy_loss, intersect_and_union

LN2 = math.log(2.0)


def test_intersect_and_union_hand_computed_with_ignore():
    labels = torch.tensor([[[0, 0, 1], [1, 255, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])  # the prediction under 255 is dropped
    inter, union, pred_area, label_area = intersect_and_union(pred, labels, num_classes=3)
    assert inter.tolist() == [1, 2, 0]
    assert pred_area.tolist() == [2, 3, 0]
    assert label_area.tolist() == [2, 2, 1]
    assert union.tolist() == [3, 3, 1]


def test_metrics_hand_computed():
    acc = SegMetricAccumulator(num_classes=3)
    acc.update(torch.tensor([[[0, 1, 1], [1, 2, 0]]]), torch.tensor([[[0, 0, 1], [1, 255, 2]]]))
    result = acc.compute()
    assert result["IoU"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert result["Acc"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert result["mIoU"] == pytest.approx(1 / 3)
    assert result["mAcc"] == pytest.approx(0.5)
    assert result["aAcc"] == pytest.approx(3 / 5)


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    acc = SegMetricAccumulator(num_classes=4)
    # class 0: I=1, P=1, L=2; class 1 only predicted: IoU 0, Acc NaN; classes 2, 3 absent from both: NaN
    acc.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    result = acc.compute()
    iou, class_acc = result["IoU"], result["Acc"]
    assert iou[:2] == pytest.approx([0.5, 0.0]) and math.isnan(iou[2]) and math.isnan(iou[3])
    assert class_acc[0] == pytest.approx(0.5) and all(math.isnan(v) for v in class_acc[1:])
    assert result["mIoU"] == pytest.approx(0.25)  # nanmean over classes 0, 1
    assert result["mAcc"] == pytest.approx(0.5)
    assert result["aAcc"] == pytest.approx(0.5)


def test_areas_are_summed_over_the_dataset_not_averaged_per_image():
    acc = SegMetricAccumulator(num_classes=2)
    acc.update(torch.tensor([[[0, 0, 0, 1]]]), torch.tensor([[[0, 0, 0, 0]]]))
    acc.update(torch.tensor([[[1, 1, 1, 1]]]), torch.tensor([[[1, 1, 1, 1]]]))
    # summed: I=[3,4], U=[4,5] → IoU [0.75, 0.8]; the mean of per-image mIoUs would be (0.375 + 1) / 2
    assert acc.compute()["mIoU"] == pytest.approx((0.75 + 0.8) / 2)


def test_logits_are_argmaxed():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2, 0, 0] = 1.0
    logits[0, 1, 0, 1] = 1.0
    acc = SegMetricAccumulator(num_classes=3)
    acc.update(logits, torch.tensor([[[2, 0]]]))
    assert acc.state()["area_intersect"].tolist() == [0, 0, 1]
    assert acc.state()["area_pred_label"].tolist() == [0, 1, 1]


def test_state_reduction_equals_single_pass():
    torch.manual_seed(0)
    pred = torch.randint(0, 5, (4, 6, 7))
    labels = torch.randint(0, 6, (4, 6, 7))
    labels[labels == 5] = 255
    whole = SegMetricAccumulator(5)
    whole.update(pred, labels)
    parts = [SegMetricAccumulator(5) for _ in range(2)]
    parts[0].update(pred[:3], labels[:3])
    parts[1].update(pred[3:], labels[3:])
    reduced = {key: parts[0].state()[key] + parts[1].state()[key] for key in parts[0].state()}  # all_reduce SUM
    assert len(reduced) == 4
    parts[0].load_state(reduced)
    assert parts[0].compute() == whole.compute()
    parts[1].merge(SegMetricAccumulator(5).state())
    merged = SegMetricAccumulator(5)
    merged.update(pred[:3], labels[:3])
    merged.merge(parts[1].state())
    assert merged.compute() == whole.compute()


def test_metric_bad_input():
    acc = SegMetricAccumulator(num_classes=3)
    with pytest.raises(ValueError, match="differ in shape"):
        acc.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values \[7\] outside \[0, 3\)"):
        acc.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="4 classes; expected 3"):
        acc.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        acc.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="predicted labels"):
        acc.update(torch.full((1, 2, 2), 255), torch.zeros(1, 2, 2, dtype=torch.long))


def test_empty_evaluation_raises():
    acc = SegMetricAccumulator(num_classes=3)
    with pytest.raises(ValueError, match="Empty"):
        acc.compute()
    acc.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="Empty"):
        acc.compute()


# ---------------------------------------------------------------- loss


def two_pixel_logits() -> torch.Tensor:
    """Pixel a: logits [0, 0]; pixel b: logits [ln 3, 0]."""
    return torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])


def test_cross_entropy_hand_computed():
    labels = torch.tensor([[[0, 1]]])  # nll: a → ln 2, b → −ln(1/4) = 2 ln 2
    assert cross_entropy_loss(two_pixel_logits(), labels).item() == pytest.approx(1.5 * LN2)
    weighted = cross_entropy_loss(two_pixel_logits(), labels, class_weights=[1.0, 3.0])
    assert weighted.item() == pytest.approx((1 * LN2 + 3 * 2 * LN2) / 4)
    torch.testing.assert_close(weighted, F.cross_entropy(two_pixel_logits(), labels, weight=torch.tensor([1.0, 3.0])))
    ignored = cross_entropy_loss(two_pixel_logits(), torch.tensor([[[0, 255]]]))
    assert ignored.item() == pytest.approx(LN2)


def test_cross_entropy_aux_and_resize():
    labels = torch.tensor([[[0, 1]]])
    aux = torch.zeros(1, 2, 1, 1)  # resized to 1×2; uniform → ln 2 per pixel
    total = cross_entropy_loss(two_pixel_logits(), labels, aux_logits=aux, aux_weight=0.4)
    assert total.item() == pytest.approx(1.5 * LN2 + 0.4 * LN2)
    small = torch.tensor([3.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    labels = torch.randint(0, 3, (2, 8, 8))
    expected = F.cross_entropy(small[:, :, :1, :1].expand(2, 3, 8, 8), labels)
    torch.testing.assert_close(cross_entropy_loss(small, labels), expected)


def test_cross_entropy_all_ignored_is_zero_with_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = cross_entropy_loss(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_bad_input():
    with pytest.raises(ValueError, match=r"values \[5\]"):
        cross_entropy_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 5))
    with pytest.raises(ValueError, match="one value per class"):
        cross_entropy_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), class_weights=[1.0])
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        cross_entropy_loss(torch.zeros(1, 3, 2, 2), torch.zeros(2, 2, dtype=torch.long))

"""The frozen-feature linear probe: the model stays bit-identical, the probe fits what is linearly decodable."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import predec
from predec.data.synthetic import SCENE_CLASSES
from predec.engine import probe as probe_module
from predec.engine.probe import (
    LinearProbe,
    decoder_features,
    evaluate_probe,
    fit_probe,
    probe_model,
    synth_probe_data,
)
from predec.models.decoders.base import DecoderOutput


def tiny_model(task: str = "segmentation", num_classes: int | None = 3) -> nn.Module:
    return predec.create_model("fpn", encoder="test_resnet", task=task, num_classes=num_classes)


def onehot_data(num: int, seed: int, num_classes: int = 4, size: int = 12) -> tuple[Tensor, Tensor]:
    """Labels (N, H, W) with ignored pixels, and features = their one-hot encoding (N, K, H, W) (zeros at 255)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num, size, size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
    features = F.one_hot(labels.clamp_max(num_classes), num_classes + 1)[..., :num_classes]
    return features.permute(0, 3, 1, 2).float(), labels


def test_model_is_bit_identical_and_its_mode_restored() -> None:
    torch.manual_seed(0)
    model = tiny_model().train()
    bn_buffers = [name for name, _ in model.named_buffers() if "running_mean" in name]
    assert bn_buffers, "the test needs a model with BatchNorm statistics"
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 3, (6, 32, 32))
    result = probe_model(
        model, images[:4], labels[:4], images[4:], labels[4:], task="segmentation", num_classes=3, epochs=2
    )
    assert model.training and all(module.training for module in model.modules())
    after = model.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    channels = model.decoder.out_channels
    assert result["feature_shape"] == [channels, 32 // model.decoder.out_reduction, 32 // model.decoder.out_reduction]
    assert set(result) == {"metrics", "train_metrics", "fit", "feature_shape"}


def test_decoder_features_is_the_decoder_output_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    model.freeze_encoder()  # mixed modes: encoder eval, the rest train
    modes = {name: module.training for name, module in model.named_modules()}
    images = torch.randn(5, 3, 32, 32)
    features = decoder_features(model, images, batch_size=2)
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert features.dtype == torch.float32 and features.device.type == "cpu" and not features.is_inference()
    model.eval()
    with torch.no_grad():
        expected = model.decoder(model.encoder(images), images).out
    torch.testing.assert_close(features, expected)
    with pytest.raises(ValueError, match="output stride"):
        decoder_features(model, torch.randn(1, 3, 30, 32))


def test_segmentation_probe_decodes_onehot_features() -> None:
    train_features, train_labels = onehot_data(16, seed=0)
    test_features, test_labels = onehot_data(8, seed=1)
    probe, record = fit_probe(train_features, train_labels, task="segmentation", num_classes=4, epochs=30, batch_size=8)
    metrics = evaluate_probe(probe, test_features, test_labels, task="segmentation")
    assert metrics["mIoU"] > 0.99 and metrics["aAcc"] > 0.99
    assert isinstance(metrics["mIoU"], float) and isinstance(metrics["IoU"], list) and len(metrics["IoU"]) == 4
    assert record["epochs"] == 30 and record["steps"] == 30 * 2 and len(record["loss_curve"]) == 30
    assert record["loss_curve"][-1][1] < record["loss_curve"][0][1]
    assert record["final_loss"] == record["loss_curve"][-1][1]
    assert isinstance(record["converged"], bool) and math.isfinite(record["relative_change_last_10pct"])


def depth_data(num: int, seed: int, max_depth: float = 10.0, min_depth: float = 0.0) -> tuple[Tensor, Tensor]:
    """Depth (N, 1, 8, 8) in (0.5, 9.5) m, some pixels invalid; features (N, 3, 8, 8) whose channel 1 is
    ``0.5 · logit((d - min) / (max - min)) + 0.3`` and the others noise."""
    generator = torch.Generator().manual_seed(seed)
    depth = 0.5 + 9.0 * torch.rand(num, 1, 8, 8, generator=generator)
    logit = torch.logit((depth - min_depth) / (max_depth - min_depth))
    features = torch.randn(num, 3, 8, 8, generator=generator)
    features[:, 1:2] = 0.5 * logit + 0.3
    depth[torch.rand(depth.shape, generator=generator) < 0.05] = 0.0
    return features, depth


def test_depth_probe_recovers_a_linear_logit() -> None:
    train_features, train_depth = depth_data(32, seed=0)
    test_features, test_depth = depth_data(8, seed=1)
    probe, record = fit_probe(train_features, train_depth, task="depth", epochs=60, batch_size=8, lr=5e-2)
    metrics = evaluate_probe(probe, test_features, test_depth, task="depth", max_depth=10.0)
    assert metrics["abs_rel"] < 0.01, (metrics, record["loss_curve"][-3:])
    assert metrics["num_images"] == 8 and isinstance(metrics["num_images"], int)
    assert probe(test_features, size=(16, 16)).shape == (8, 1, 16, 16)


def test_features_are_standardised_so_their_scale_does_not_matter() -> None:
    """The probe standardises each channel with the training features' mean and std: a fit on features scaled by
    1000 and shifted per channel gives the same predictions (the function class is the same, and so is the fit)."""
    train_features, train_labels = onehot_data(16, seed=0)
    test_features, _ = onehot_data(4, seed=1)
    scale = torch.tensor([1000.0, 0.01, 3.0, 50.0]).view(1, 4, 1, 1)
    shift = torch.tensor([5.0, -2.0, 0.0, 100.0]).view(1, 4, 1, 1)
    kwargs = {"task": "segmentation", "num_classes": 4, "epochs": 5, "batch_size": 8, "seed": 3}
    plain, _ = fit_probe(train_features, train_labels, **kwargs)
    moved, _ = fit_probe(train_features * scale + shift, train_labels, **kwargs)
    mean = train_features.mean(dim=(0, 2, 3))
    torch.testing.assert_close(moved.feature_mean.flatten(), mean * scale.flatten() + shift.flatten())
    torch.testing.assert_close(plain(test_features), moved(test_features * scale + shift), atol=1e-4, rtol=1e-4)


def test_depth_bias_starts_at_the_median_depth() -> None:
    features, depth = depth_data(4, seed=0, max_depth=12.0, min_depth=0.2)
    probe, _ = fit_probe(features, depth, task="depth", max_depth=12.0, min_depth=0.2, epochs=1, lr=1e-12)
    bias = float(probe.conv.bias.detach())
    median = float(depth[depth > 1e-3].median())
    assert torch.sigmoid(torch.tensor(bias)) * 11.8 + 0.2 == pytest.approx(median, rel=1e-4)


def test_the_seed_decides_the_probe_bit_for_bit() -> None:
    features, labels = onehot_data(12, seed=0)
    first, _ = fit_probe(features, labels, task="segmentation", num_classes=4, epochs=3, batch_size=4, seed=7)
    again, _ = fit_probe(features, labels, task="segmentation", num_classes=4, epochs=3, batch_size=4, seed=7)
    other, _ = fit_probe(features, labels, task="segmentation", num_classes=4, epochs=3, batch_size=4, seed=8)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert not torch.equal(first.conv.weight, other.conv.weight)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_probe_model_end_to_end_on_synthscenes(task: str) -> None:
    torch.manual_seed(0)
    num_classes = len(SCENE_CLASSES) if task == "segmentation" else None
    model = tiny_model(task, num_classes)
    train_images, train_targets = synth_probe_data(16, (32, 32), seed=0, task=task)
    test_images, test_targets = synth_probe_data(8, (32, 32), seed=1, task=task)
    assert train_images.shape == (16, 3, 32, 32) and train_images.dtype == torch.float32
    expected = (16, 32, 32) if task == "segmentation" else (16, 1, 32, 32)
    assert tuple(train_targets.shape) == expected
    assert train_targets.dtype == (torch.int64 if task == "segmentation" else torch.float32)
    result = probe_model(
        model, train_images, train_targets, test_images, test_targets, task=task, num_classes=num_classes, epochs=5
    )
    main = "mIoU" if task == "segmentation" else "abs_rel"
    assert math.isfinite(result["metrics"][main]) and math.isfinite(result["train_metrics"][main])
    assert all(math.isfinite(loss) for _, loss in result["fit"]["loss_curve"])
    assert result["fit"]["steps"] == 5  # 16 images, batch 64: one step per epoch


def test_a_parameter_changed_during_probing_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    real = probe_module.decoder_features

    def tampering(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
        with torch.no_grad():
            model.head.conv.bias.add_(1.0)
        return real(model, images, batch_size)

    monkeypatch.setattr(probe_module, "decoder_features", tampering)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    with pytest.raises(RuntimeError, match=r"head\.conv\.bias"):
        probe_model(model, images, labels, images, labels, task="segmentation", num_classes=3, epochs=1)


class _Counting(nn.Module):
    """A decoder that counts its calls in a buffer (a model that mutates itself in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, features: list[Tensor], x: Tensor) -> DecoderOutput:
        self.calls += 1
        return DecoderOutput(out=self.conv(features[0]), levels={})


class _SelfMutating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.decoder = _Counting()

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder([self.encoder(x)], x).out


def test_a_buffer_mutated_by_forward_is_named() -> None:
    model = _SelfMutating()
    images, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))
    with pytest.raises(RuntimeError, match=r"decoder\.calls"):
        probe_model(model, images, labels, images, labels, task="segmentation", num_classes=4, epochs=1)


def test_wrong_inputs_say_what_is_expected() -> None:
    features, labels = onehot_data(2, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        fit_probe(features, labels, task="segmentation")
    with pytest.raises(ValueError, match="valid: depth, segmentation"):
        fit_probe(features, labels, task="classification", num_classes=4)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        fit_probe(features, labels, task="depth")
    with pytest.raises(ValueError, match="different numbers of samples"):
        fit_probe(features, labels[:1], task="segmentation", num_classes=4)
    with pytest.raises(ValueError, match="no valid pixel"):
        fit_probe(features, torch.zeros(2, 1, 12, 12), task="depth")
    probe = LinearProbe(4, task="segmentation", num_classes=4)
    with pytest.raises(ValueError, match="trained for 'segmentation'"):
        evaluate_probe(probe, features, labels, task="depth")

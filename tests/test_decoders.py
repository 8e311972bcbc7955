"""Decoders: the shared contract on real (tiny) timm features, FPN/FCN key layouts, FPN skip dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from predec.models.decoders import DECODERS, DecoderOutput, build_decoder, decoder_options
from predec.models.decoders.deeplabv3plus import scale_atrous_rates
from predec.models.decoders.fpn import FPN, PathDropout
from predec.models.encoders import TimmBackbone

H, W = 64, 96  # non-square on purpose
EXTRA_KWARGS = {"xnet": {"backbone": "test_convnext"}}


@pytest.fixture(scope="module", params=["test_resnet", "test_convnext"])
def encoded(request):
    """(encoder, image, features) of a tiny timm encoder on a 64×96 input."""
    torch.manual_seed(0)
    encoder = TimmBackbone(request.param)
    image = torch.randn(2, 3, H, W)
    with torch.no_grad():
        features = encoder(image)
    return encoder, image, features


def test_registry_has_every_architecture():
    assert set(DECODERS) == {"xnet", "fpn", "fcn", "unet", "deeplabv3plus"}


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_decoder_contract(arch, encoded):
    encoder, image, features = encoded
    decoder = build_decoder(arch, encoder.channels, encoder.reductions, **EXTRA_KWARGS.get(arch, {}))
    features = [f.clone().requires_grad_(True) for f in features]
    result = decoder(features, image)

    assert isinstance(result, DecoderOutput)
    r = decoder.out_reduction
    assert tuple(result.out.shape) == (2, decoder.out_channels, H // r, W // r)
    assert set(result.levels) == set(decoder.level_channels) == set(decoder.level_reductions)
    assert decoder.default_level in result.levels
    for name, level in result.levels.items():
        r = decoder.level_reductions[name]
        assert tuple(level.shape) == (2, decoder.level_channels[name], H // r, W // r), name
    assert H % decoder.input_divisor == 0 and W % decoder.input_divisor == 0

    loss = result.out.square().mean() + sum(level.mean() for level in result.levels.values())
    loss.backward()
    assert features[-1].grad is not None and features[-1].grad.abs().sum() > 0
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainable) >= len(trainable) // 2


def test_build_decoder_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="fpn"):
        build_decoder("fnp", [8, 16], [16, 32])
    with pytest.raises(ValueError, match="skip_dropout"):
        build_decoder("fpn", [8, 16], [16, 32], skip_dropuot=0.5)
    assert "dilation" in decoder_options("fcn")


def test_wrong_feature_channels_are_reported():
    decoder = build_decoder("fpn", [8, 16], [16, 32])
    with pytest.raises(ValueError, match=r"channels \[8, 16\]"):
        decoder([torch.randn(1, 8, 4, 4), torch.randn(1, 15, 2, 2)], torch.randn(1, 3, 64, 64))


# ---------------------------------------------------------------- FPN


def detectron2_fpn_keys(stages, norm):
    """State-dict keys of detectron2's FPN (no top block) with the given norm."""
    norm_keys = {
        "BN": ["norm.weight", "norm.bias", "norm.running_mean", "norm.running_var", "norm.num_batches_tracked"],
        "GN": ["norm.weight", "norm.bias"],
        None: ["bias"],
    }[norm]
    return {f"fpn_{kind}{s}.{key}" for s in stages for kind in ("lateral", "output") for key in ["weight", *norm_keys]}


@pytest.mark.parametrize("norm", ["BN", "GN", None])
def test_fpn_parameter_names_are_detectron2s(norm):
    channels = [64, 128, 256, 512]
    fpn = FPN(channels, [4, 8, 16, 32], norm=norm)
    state = fpn.state_dict()
    assert set(state) == detectron2_fpn_keys([2, 3, 4, 5], norm)
    for s, c in zip([2, 3, 4, 5], channels):
        assert state[f"fpn_lateral{s}.weight"].shape == (256, c, 1, 1)
        assert state[f"fpn_output{s}.weight"].shape == (256, 256, 3, 3)
        if norm is None:
            assert state[f"fpn_lateral{s}.bias"].abs().sum() == 0  # c2-xavier: zero bias
    assert fpn.level_channels == {"p2": 256, "p3": 256, "p4": 256, "p5": 256}
    assert fpn.level_reductions == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    assert fpn.default_level == "p2"


def test_fpn_out_modes():
    torch.manual_seed(0)
    feats = [torch.randn(1, c, 32 // r, 48 // r) for c, r in zip([8, 16, 24, 32], [1, 2, 4, 8])]
    image = torch.randn(1, 3, 128, 192)
    p2_only = FPN([8, 16, 24, 32], [4, 8, 16, 32], channels=32, out_mode="p2").eval()
    summed = FPN([8, 16, 24, 32], [4, 8, 16, 32], channels=32, out_mode="sum").eval()
    summed.load_state_dict(p2_only.state_dict())
    a, b = p2_only(feats, image), summed(feats, image)
    assert torch.equal(a.out, a.levels["p2"])
    assert torch.allclose(b.levels["p2"], a.levels["p2"])
    assert not torch.allclose(b.out, a.out)  # the deeper levels are added


def record_skip_dropout(fpn: FPN):
    """Attach a hook to the FPN's skip dropout; returns the list it fills with (input, output) pairs."""
    calls = []
    fpn.skip_dropout.register_forward_hook(lambda m, args, out: calls.append((args[0].detach(), out.detach())))
    return calls


FEATS_CHANNELS, FEATS_STRIDES = [8, 16, 24, 32], [4, 8, 16, 32]


def tiny_feats(batch=4):
    return [torch.randn(batch, c, 64 // r, 96 // r) for c, r in zip(FEATS_CHANNELS, FEATS_STRIDES)]


def test_fpn_channel_skip_dropout_zeroes_whole_channels_of_skips_only():
    torch.manual_seed(0)
    p = 0.5
    fpn = FPN(FEATS_CHANNELS, FEATS_STRIDES, channels=64, skip_dropout=p, skip_dropout_mode="channel").train()
    calls = record_skip_dropout(fpn)
    fpn(tiny_feats(), None)
    # res2..res4 laterals go through it (strides 16, 8, 4: top-down order), the res5 lateral does not.
    assert [tuple(x.shape[-2:]) for x, _ in calls] == [(4, 6), (8, 12), (16, 24)]
    zero_fraction = []
    for x, y in calls:
        dropped = (y == 0).flatten(2).all(-1)  # (B, C): whole channel zero
        kept = ~dropped
        assert torch.allclose(y[kept], x[kept] / (1 - p))  # Dropout2d rescales what it keeps
        zero_fraction.append(dropped.float().mean())
    assert 0.35 < torch.stack(zero_fraction).mean() < 0.65


def test_path_dropout_drops_whole_maps_with_probability_p():
    torch.manual_seed(0)
    p, n = 0.3, 2000
    drop = PathDropout(p).train()
    x = torch.rand(2, 3, 4, 4) + 0.1
    dropped = []
    for _ in range(n):
        y = drop(x)
        assert torch.equal(y, x) or torch.equal(y, torch.zeros_like(x))  # whole batch, no rescaling
        dropped.append(bool(y.sum() == 0))
    # 4 standard deviations of a binomial(n, p) proportion.
    assert abs(sum(dropped) / n - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(drop.eval()(x), x)


def test_fpn_path_skip_dropout_uses_one_coin_per_lateral():
    torch.manual_seed(0)
    fpn = FPN(FEATS_CHANNELS, FEATS_STRIDES, channels=16, norm=None, skip_dropout=0.5, skip_dropout_mode="path")
    calls = record_skip_dropout(fpn.train())
    for _ in range(40):
        fpn(tiny_feats(batch=2), None)
    assert len(calls) == 120
    outcomes = []
    for x, y in calls:
        if y.abs().sum() == 0:
            outcomes.append(1)
        else:
            assert torch.equal(x, y)
            outcomes.append(0)
    per_forward = torch.tensor(outcomes).view(40, 3)
    assert 0 < per_forward.sum() < 120
    assert (per_forward.sum(1) % 3 != 0).any()  # laterals are decided independently, not by a single coin


@pytest.mark.parametrize("mode", ["channel", "path"])
def test_fpn_skip_dropout_inactive_in_eval(mode):
    torch.manual_seed(0)
    feats = tiny_feats()
    plain = FPN(FEATS_CHANNELS, FEATS_STRIDES, channels=16).eval()
    dropping = FPN(FEATS_CHANNELS, FEATS_STRIDES, channels=16, skip_dropout=0.9, skip_dropout_mode=mode).eval()
    dropping.load_state_dict(plain.state_dict())
    assert torch.equal(plain(feats, None).out, dropping(feats, None).out)
    dropping.train()
    plain.train()
    assert not torch.allclose(plain(feats, None).out, dropping(feats, None).out)


def test_fpn_rejects_bad_options():
    with pytest.raises(ValueError, match="norm"):
        FPN([8], [4], norm="LN")
    with pytest.raises(ValueError, match="skip_dropout_mode"):
        FPN([8], [4], skip_dropout_mode="spatial")
    with pytest.raises(ValueError, match="power of two"):
        FPN([8, 8], [4, 12])


# ---------------------------------------------------------------- FCN, U-Net, DeepLabV3+


@pytest.mark.parametrize("concat_input", [False, True])
def test_fcn_parameter_names_are_mmsegs(concat_input):
    fcn = build_decoder("fcn", [16, 32, 64, 128], [4, 8, 16, 32], dilation=6, concat_input=concat_input)
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    modules = ["convs.0", "convs.1", *(["conv_cat"] if concat_input else [])]
    expected = {f"{m}.conv.weight" for m in modules} | {f"{m}.bn.{k}" for m in modules for k in bn}
    assert set(fcn.state_dict()) == expected
    assert fcn.convs[0].conv.weight.shape == (256, 128, 3, 3)
    assert fcn.convs[0].conv.dilation == (6, 6) and fcn.convs[0].conv.padding == (6, 6)
    if concat_input:
        assert fcn.conv_cat.conv.weight.shape == (256, 128 + 256, 3, 3)
    out = fcn([torch.randn(2, c, 128 // r, 64 // r) for c, r in zip([16, 32, 64, 128], [4, 8, 16, 32])], None)
    assert out.out.shape == (2, 256, 4, 2) and fcn.level_reductions == {"out": 32}


def test_fcn_reads_only_the_deepest_map():
    torch.manual_seed(0)
    fcn = build_decoder("fcn", [16, 32], [16, 32], channels=8).eval()
    feats = [torch.randn(1, 16, 4, 4), torch.randn(1, 32, 2, 2)]
    a = fcn(feats, None).out
    b = fcn([torch.randn(1, 16, 4, 4), feats[1]], None).out
    assert torch.equal(a, b)


def test_unet_levels_follow_strides():
    unet = build_decoder("unet", [16, 32, 64, 128], [4, 8, 16, 32])
    assert unet.level_reductions == {"u4": 16, "u3": 8, "u2": 4, "u1": 2, "u0": 1}
    assert unet.level_channels == {"u4": 256, "u3": 128, "u2": 64, "u1": 32, "u0": 16}
    assert unet.default_level == "u2" and unet.out_reduction == 1
    short = build_decoder("unet", [16, 32, 64, 128], [4, 8, 16, 32], decoder_channels=(64, 32, 16))
    assert short.out_reduction == 4 and short.out_channels == 16
    with pytest.raises(ValueError, match="decoder_channels"):
        build_decoder("unet", [16, 32, 64, 128], [4, 8, 16, 32], decoder_channels=(64, 32))


def test_deeplabv3plus_rates_scale_with_output_stride():
    assert scale_atrous_rates((12, 24, 36), 8) == (12, 24, 36)
    assert scale_atrous_rates((12, 24, 36), 16) == (6, 12, 18)
    assert scale_atrous_rates((12, 24, 36), 32) == (3, 6, 9)
    decoder = build_decoder("deeplabv3plus", [16, 32, 64, 128], [4, 8, 16, 32])
    dilations = [m.dilation[0] for m in decoder.aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert dilations == [3, 6, 9]
    assert decoder.low_level[0].out_channels == 48
    assert decoder.level_reductions == {"aspp": 32, "out": 4}

"""×Net decoder: timm keys of the decoder backbone, multiplier ≈ 1 at init, variants, no encoder skips."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from predec.models.decoders import build_decoder
from predec.models.decoders.xnet import MIXING_MODES, RESHAPE_MODES, PostFeaturePyramid, ReShape, XNetDecoder, mix

H, W = 64, 96
ENC_CHANNELS, ENC_STRIDES = [8, 16, 24, 32], [4, 8, 16, 32]


def encoder_features(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, H // r, W // r, generator=g) for c, r in zip(ENC_CHANNELS, ENC_STRIDES)]


def make_xnet(backbone="test_convnext", **kwargs) -> XNetDecoder:
    return build_decoder("xnet", ENC_CHANNELS, ENC_STRIDES, backbone=backbone, **kwargs)


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_decoder_backbone_keys_are_timms(name):
    torch.manual_seed(0)
    decoder = make_xnet(name)
    reference = timm.create_model(name, pretrained=False)
    ref_state = reference.state_dict()
    own = {k.removeprefix("backbone.model.") for k in decoder.state_dict() if k.startswith("backbone.model.")}
    assert own and own <= set(ref_state)
    # What the decoder lacks is only timm's classifier / final norm.
    assert all(k.split(".")[0] in ("fc", "head", "norm") for k in set(ref_state) - own)
    missing, unexpected = decoder.backbone.model.load_state_dict(ref_state, strict=False)
    assert missing == []
    assert set(unexpected) == set(ref_state) - own
    for key in own:
        assert torch.equal(decoder.state_dict()[f"backbone.model.{key}"], ref_state[key])
    # No other module lives under the backbone.
    assert {n.split(".")[0] for n, _ in decoder.named_children()} == {
        "input_reshape",
        "backbone",
        "pfp",
        "output_reshape",
    }


@pytest.mark.parametrize("reshape", RESHAPE_MODES)
@pytest.mark.parametrize("mixing", ["mul", "add"])
def test_decoder_input_is_the_image_at_init(reshape, mixing):
    torch.manual_seed(0)
    decoder = make_xnet(reshape=reshape, mixing=mixing)
    image = torch.randn(2, 3, H, W)
    deepest = encoder_features()[-1]  # unit-variance features
    guide = decoder.input_reshape(deepest)
    neutral = 1.0 if mixing == "mul" else 0.0
    assert abs(guide.mean() - neutral) < 0.005 and guide.std() < 0.03  # multiplier ≈ 1 (or addend ≈ 0)
    mixed = decoder.mixed_input(deepest, image)
    assert mixed.shape == image.shape
    assert (mixed - image).abs().max() < 0.2 * image.abs().max()
    assert (mixed - image).square().mean() < 1e-3 * image.square().mean()
    # ... and it is not the image once the Re-Shape has learned something (the guide path is live).
    nn.init.normal_(decoder.input_reshape.proj.weight, std=0.1)
    assert not torch.allclose(decoder.mixed_input(encoder_features()[-1], image), image, atol=1e-3)


def test_encoder_gets_gradient_from_the_first_step():
    torch.manual_seed(0)
    decoder = make_xnet()
    feats = [f.requires_grad_(True) for f in encoder_features()]
    decoder(feats, torch.randn(2, 3, H, W)).out.square().mean().backward()
    assert decoder.input_reshape.proj.weight.grad.abs().sum() > 0
    assert feats[-1].grad.abs().sum() > 0


@pytest.mark.parametrize("reshape", RESHAPE_MODES)
@pytest.mark.parametrize("mixing", MIXING_MODES)
def test_every_variant_runs(reshape, mixing):
    torch.manual_seed(0)
    decoder = make_xnet(reshape=reshape, mixing=mixing, pfp_channels=8, out_channels=4)
    feats = [f.requires_grad_(True) for f in encoder_features()]
    result = decoder(feats, torch.randn(2, 3, H, W))
    assert result.out.shape == (2, 4, H, W)
    assert decoder.level_channels == {"d2": 24, "d3": 32, "d4": 48, "d5": 64, "fused": 24 + 3 * 8}
    assert decoder.level_reductions == {"d2": 4, "d3": 8, "d4": 16, "d5": 32, "fused": 4}
    for name, level in result.levels.items():
        r = decoder.level_reductions[name]
        assert level.shape == (2, decoder.level_channels[name], H // r, W // r)
    (result.out.mean() + result.levels["fused"].mean()).backward()
    assert decoder.output_reshape.proj.weight.grad is not None


def test_defaults():
    decoder = make_xnet()
    assert decoder.mixing == "mul" and decoder.mix_channels == 3
    assert decoder.reshape == "bilinear" and decoder.input_reshape.mode == "bilinear"
    assert decoder.input_reshape.scale == 32
    assert decoder.pfp.out_channels == 4 * 24  # pfp_channels = the decoder's H/4 channels
    assert decoder.out_channels == 32 and decoder.out_reduction == 1
    assert decoder.default_level == "fused" and decoder.input_divisor == 32


def test_only_the_deepest_encoder_map_is_used():
    torch.manual_seed(0)
    decoder = make_xnet().eval()
    nn.init.normal_(decoder.input_reshape.proj.weight, std=0.05)  # make the output depend on the encoder
    image = torch.randn(2, 3, H, W)
    feats = encoder_features(seed=0)
    other = encoder_features(seed=1)
    with torch.no_grad():
        reference = decoder(feats, image).out
        skips_changed = decoder([*other[:-1], feats[-1]], image).out
        deepest_changed = decoder([*feats[:-1], other[-1]], image).out
    assert torch.equal(reference, skips_changed)
    assert not torch.allclose(reference, deepest_changed)


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_concat_stem_keeps_pretrained_image_filters(name):
    torch.manual_seed(0)
    decoder = make_xnet(name, mixing="concat")
    reference = timm.create_model(name, pretrained=False)
    stem = reference.pretrained_cfg["first_conv"]
    ref_weight = reference.get_submodule(stem).weight
    # Loading a 3-channel timm state dict, directly or nested in a larger model, widens the stem with zeros.
    decoder.backbone.model.load_state_dict(reference.state_dict(), strict=False)
    weight = decoder.backbone.model.get_submodule(stem).weight
    assert weight.shape[1] == 6
    assert torch.equal(weight[:, :3], ref_weight) and weight[:, 3:].abs().sum() == 0
    nested = nn.ModuleDict({"decoder": make_xnet(name, mixing="concat")})
    state = {f"decoder.backbone.model.{k}": v for k, v in reference.state_dict().items()}
    nested.load_state_dict(state, strict=False)
    assert torch.equal(nested["decoder"].backbone.model.get_submodule(stem).weight, weight)
    # The extra channels start without effect: the backbone sees only the image.
    decoder.eval()
    image = torch.randn(1, 3, H, W)
    guide = decoder.input_reshape(encoder_features(batch=1)[-1])
    assert guide.abs().sum() > 0
    with torch.no_grad():
        image_only = decoder.backbone(torch.cat([image, torch.zeros_like(image)], 1))
        mixed = decoder.backbone(decoder.mixed_input(encoder_features(batch=1)[-1], image))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(image_only, mixed))


def test_reshape_shapes_and_constant_init():
    x = torch.randn(2, 16, 3, 5)
    for mode in RESHAPE_MODES:
        for scale in (1, 2, 8, 32):
            module = ReShape(16, 3, scale, mode)
            assert module(x).shape == (2, 3, 3 * scale, 5 * scale), (mode, scale)
            module.init_constant(1.0, noise_std=0.0)
            assert torch.equal(module(x), torch.ones(2, 3, 3 * scale, 5 * scale))
            module.init_constant(1.0)
            assert (module(x) - 1).abs().max() < 0.1
    assert ReShape(16, 3, 32, "pixelshuffle").proj.out_channels == 3 * 32 * 32


def test_post_feature_pyramid_concatenates_h4_first():
    pfp = PostFeaturePyramid([4, 8, 12, 16], [4, 8, 16, 32], channels=5, reshape="bilinear")
    feats = [torch.randn(1, c, 32 // r, 64 // r) for c, r in zip([4, 8, 12, 16], [4, 8, 16, 32])]
    fused = pfp(feats)
    assert fused.shape == (1, 4 + 3 * 5, 8, 16) and pfp.out_channels == 19
    assert torch.equal(fused[:, :4], feats[0])


def test_mix_modes():
    image, guide = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    assert torch.equal(mix(image, guide, "mul"), image * guide)
    assert torch.equal(mix(image, guide, "add"), image + guide)
    assert mix(image, guide, "concat").shape == (1, 6, 4, 4)
    with pytest.raises(ValueError, match="mixing"):
        mix(image, guide, "max")


def test_bad_options_and_inputs_are_reported():
    with pytest.raises(ValueError, match="mix_channels"):
        make_xnet(mix_channels=4)
    with pytest.raises(ValueError, match="Re-Shape mode"):
        make_xnet(reshape="nearest")
    with pytest.raises(ValueError, match="mixing"):
        make_xnet(mixing="max")
    with pytest.raises(ValueError, match="not a timm model"):
        make_xnet("resnet_18")
    decoder = make_xnet()
    with pytest.raises(ValueError, match=r"\(64, 96\)"):
        decoder(encoder_features(), torch.randn(2, 3, H, W + 32))
    assert make_xnet(mix_channels=1).mixed_input(encoder_features()[-1], torch.ones(2, 3, H, W)).shape == (2, 3, H, W)


def test_saved_models_record_their_reshape_and_older_ones_load_as_pixel_shuffle(tmp_path):
    """``config.json`` records the Re-Shape; one written before it did (no key) is rebuilt with pixel shuffle."""
    import json

    import predec

    options = {"encoder": "test_resnet", "decoder": "test_resnet", "task": "depth"}
    bilinear = predec.create_model("xnet", **options)
    bilinear.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["reshape"] == "bilinear"
    assert predec.from_pretrained(tmp_path / "new").decoder.reshape == "bilinear"

    old = predec.create_model("xnet", reshape="pixelshuffle", **options)
    old.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    del config["reshape"]  # as predec wrote it before the mode was recorded
    config_file.write_text(json.dumps(config))
    loaded = predec.from_pretrained(tmp_path / "old")
    assert loaded.decoder.reshape == "pixelshuffle"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), old.eval()(x))


def test_a_saved_xnet_fits_its_recipe_without_a_reshape_key_and_another_reshape_does_not(tmp_path):
    """The recorded default Re-Shape equals a recipe that leaves it out; a pixel-shuffle model is another one."""
    import predec
    from predec.config import DenseConfig, ModelConfig
    from predec.engine.dense_checkpoint import check_checkpoint_architecture, load_dense_checkpoint

    options = {"encoder": "test_resnet", "decoder": "test_resnet", "task": "depth"}
    recipe = DenseConfig(model=ModelConfig(arch="xnet", **options))
    predec.create_model("xnet", **options).save_pretrained(tmp_path / "default")
    check_checkpoint_architecture(load_dense_checkpoint(tmp_path / "default"), recipe)
    predec.create_model("xnet", reshape="pixelshuffle", **options).save_pretrained(tmp_path / "shuffle")
    with pytest.raises(ValueError, match="decoder_kwargs"):
        check_checkpoint_architecture(load_dense_checkpoint(tmp_path / "shuffle"), recipe)


def test_a_pixel_shuffle_checkpoint_loaded_into_the_default_xnet_says_which_reshape_it_needs(tmp_path):
    import predec
    from predec.engine.dense_checkpoint import DenseCheckpoint, load_state_checked

    options = {"encoder": "test_resnet", "decoder": "test_resnet", "task": "depth"}
    old = predec.create_model("xnet", reshape="pixelshuffle", **options)
    checkpoint = DenseCheckpoint(path=tmp_path / "last.ckpt", state_dict=old.state_dict())
    with pytest.raises(ValueError, match=r"model\.decoder_kwargs\.reshape=pixelshuffle") as error:
        load_state_checked(predec.create_model("xnet", **options), checkpoint, "the recipe")
    assert str(tmp_path / "last.ckpt") in str(error.value)
    load_state_checked(predec.create_model("xnet", reshape="pixelshuffle", **options), checkpoint, "the recipe")


def test_resuming_a_pixel_shuffle_run_written_before_the_default_changed_is_exit_2_naming_the_fix(tmp_path, capsys):
    """A ×Net run whose recipe left ``reshape`` out when pixel shuffle was the default: its checkpoint no longer
    fits the recipe, and ``predec train --resume`` says so (exit 2, the fix named) instead of Lightning's traceback."""
    from predec.cli import main

    run = tmp_path / "old"
    overrides = ["model.encoder=test_resnet", "model.decoder=test_resnet", "data.num_train=4", "data.num_val=2"]
    overrides += ["data.image_size=[64, 64]", "data.crop_size=[64, 64]", "data.batch_size=2", "trainer.max_steps=1"]
    overrides += ["trainer.progress_bar=false", "trainer.precision=32-true", "schedule.warmup_steps=0"]
    train = ["train", "--config", "dense/synth_seg_xnet"]
    assert main([*train, "--run-dir", str(run), *overrides, "model.decoder_kwargs={reshape: pixelshuffle}"]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    raw = torch.load(checkpoint, weights_only=False)
    del raw["hyper_parameters"]["config"]["model"]["decoder_kwargs"]["reshape"]  # as written before it was recorded
    old = tmp_path / "before.ckpt"
    torch.save(raw, old)
    capsys.readouterr()
    resumed = ["--run-dir", str(tmp_path / "resumed"), "--resume", str(old)]
    assert main([*train, *resumed, *overrides, "trainer.max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"predec train: error: Weights '{old}' do not fit") and "Traceback" not in err, err
    assert "model.decoder_kwargs.reshape=pixelshuffle" in err, err

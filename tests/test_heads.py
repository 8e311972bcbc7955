"""Task heads with hidden Conv3×3-BN-ReLU blocks (``head_kwargs``): module, per-architecture defaults (FPN's head is
non-linear), the config records the resolved options, configs and checkpoints written before keep their linear head,
and the engine's architecture check."""

import json

import pytest
import torch

import predec
from predec.config import DenseConfig, ModelConfig
from predec.engine.dense import architecture_mismatch, build_model
from predec.engine.dense_checkpoint import (
    DenseCheckpoint,
    check_checkpoint_architecture,
    load_dense_checkpoint,
    load_inference_module,
    load_state_checked,
)
from predec.models.base import head_options
from predec.models.decoders import DECODERS, FPN
from predec.models.heads import HEAD_OPTIONS, DepthHead, SegmentationHead, build_head

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def tiny(arch: str = "fpn", task: str = "segmentation", **kwargs) -> predec.DenseModel:
    options = {"num_classes": 3} if task == "segmentation" else {}
    return predec.create_model(arch, encoder="test_resnet", task=task, **{**options, **kwargs})


def linear_fpn(**kwargs) -> predec.DenseModel:
    return tiny("fpn", head_kwargs={"convs": 0}, **kwargs)


@pytest.mark.parametrize("convs", [0, 1, 2])
@pytest.mark.parametrize("task", ["depth", "segmentation"])
def test_head_blocks_shapes_and_state_dict_keys(task, convs):
    torch.manual_seed(0)
    head = build_head(task, 8, num_classes=5 if task == "segmentation" else None, convs=convs, channels=4)
    assert isinstance(head, DepthHead if task == "depth" else SegmentationHead)
    blocks = {f"blocks.{i}.conv.weight" for i in range(convs)} | {
        f"blocks.{i}.bn.{k}" for i in range(convs) for k in BN_KEYS
    }
    assert set(head.state_dict()) == {"conv.weight", "conv.bias"} | blocks
    for i in range(convs):
        assert head.blocks[i].conv.weight.shape == (4, 8 if i == 0 else 4, 3, 3) and head.blocks[i].conv.bias is None
    out_channels = 1 if task == "depth" else 5
    kernel = 3 if task == "depth" else 1
    assert head.conv.weight.shape == (out_channels, 4 if convs else 8, kernel, kernel)
    y = head(torch.randn(2, 8, 8, 8), size=(32, 32))
    assert y.shape == (2, out_channels, 32, 32)
    assert head(torch.randn(2, 8, 8, 8)).shape == (2, out_channels, 8, 8)
    if convs == 0:  # exactly the head of every model saved before the blocks existed: no extra module
        assert not hasattr(head, "blocks") and [n for n, _ in head.named_modules()] == ["", "conv"]


def test_head_blocks_default_to_the_input_width_and_bad_values_are_named():
    assert SegmentationHead(8, num_classes=2, convs=1).blocks[0].conv.weight.shape == (8, 8, 3, 3)
    with pytest.raises(ValueError, match=r"convs=-1 must be an integer >= 0"):
        DepthHead(8, convs=-1)
    with pytest.raises(ValueError, match=r"channels=0 must be an integer >= 1"):
        SegmentationHead(8, num_classes=2, convs=1, channels=0)
    with pytest.raises(ValueError, match=r"Unknown head option head_kwargs\['conv'\]=1; valid: convs, channels\. "):
        tiny(head_kwargs={"conv": 1})
    with pytest.raises(ValueError, match=r"head_kwargs must be a dict"):
        tiny(head_kwargs=2)


def test_decoders_declare_their_head_defaults():
    for arch, cls in DECODERS.items():
        assert set(cls.head_defaults) <= set(HEAD_OPTIONS), arch
        assert cls.head_defaults == ({"convs": 2, "channels": 128} if arch == "fpn" else {}), arch
    assert head_options("fpn", None) == {"convs": 2, "channels": 128}
    assert head_options("fpn", {"channels": 64}) == {"convs": 2, "channels": 64}  # the user's options over defaults
    assert head_options("unet", {}) == {"convs": 0, "channels": None}


def _decode(model: predec.DenseModel, features: list[torch.Tensor]) -> torch.Tensor:
    """Decoder + head on encoder maps, at the 32×32 input size."""
    return model.head(model.decoder(features, None).out, size=(32, 32))


def test_fpn_default_head_is_non_linear_and_convs_0_is_the_affine_head():
    """FPN + a one-conv head is an affine map of the encoder's features (eval mode: BN is affine); the default head
    breaks that: g(a + b) + g(0) != g(a) + g(b)."""
    torch.manual_seed(0)
    default, linear = tiny().eval(), linear_fpn().eval()
    assert len(default.head.blocks) == 2 and default.head.conv.weight.shape == (3, 128, 1, 1)
    assert not hasattr(linear.head, "blocks") and set(linear.head.state_dict()) == {"conv.weight", "conv.bias"}
    x = torch.randn(1, 3, 32, 32)
    a = default.encoder(x)
    b = default.encoder(torch.randn(1, 3, 32, 32))
    zero = [torch.zeros_like(f) for f in a]
    both = [fa + fb for fa, fb in zip(a, b)]
    with torch.no_grad():
        for model, affine in ((linear, True), (default, False)):
            gap = _decode(model, both) + _decode(model, zero) - _decode(model, a) - _decode(model, b)
            scale = _decode(model, a).abs().max()
            assert (float(gap.abs().max()) < 1e-4 * float(scale)) is affine, float(gap.abs().max() / scale)
        assert default(x).shape == linear(x).shape == (1, 3, 32, 32)


def test_config_records_the_resolved_head_options_and_save_load_round_trip(tmp_path, monkeypatch):
    torch.manual_seed(0)
    fpn, unet = tiny(), tiny("unet", head_kwargs={"convs": 1, "channels": 8})
    assert fpn.config["head_kwargs"] == {"convs": 2, "channels": 128}
    assert unet.config["head_kwargs"] == {"convs": 1, "channels": 8}
    assert tiny("unet").config["head_kwargs"] == {"convs": 0, "channels": None}
    x = torch.randn(1, 3, 32, 32)
    for name, model in (("fpn", fpn), ("unet", unet)):
        model.train()(torch.randn(2, 3, 32, 32))  # move the head's BatchNorm statistics away from their init
        model.save_pretrained(tmp_path / name)
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert saved["head_kwargs"] == model.config["head_kwargs"]
    # a later default cannot change what a saved model is
    monkeypatch.setattr(FPN, "head_defaults", {"convs": 1, "channels": 32})
    for name, model in (("fpn", fpn), ("unet", unet)):
        loaded = predec.from_pretrained(tmp_path / name)
        assert loaded.config == model.config
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def _write_old_config(directory) -> None:
    """Make a save_pretrained directory look as predec wrote it before the head options were recorded."""
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    del config["head_kwargs"]
    config_file.write_text(json.dumps(config))


def test_a_config_json_without_head_kwargs_rebuilds_the_linear_head_and_loads_its_weights(tmp_path):
    torch.manual_seed(0)
    old = linear_fpn(task="depth")
    old.train()(torch.randn(2, 3, 32, 32))
    old.save_pretrained(tmp_path / "old")
    _write_old_config(tmp_path / "old")
    loaded = predec.from_pretrained(tmp_path / "old")
    assert not hasattr(loaded.head, "blocks") and loaded.config["head_kwargs"] == {"convs": 0, "channels": None}
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), old.eval()(x), rtol=0, atol=0)
    loaded = predec.from_pretrained(tmp_path / "old" / "model.safetensors")
    torch.testing.assert_close(loaded(x), old(x), rtol=0, atol=0)

    checkpoint = load_dense_checkpoint(tmp_path / "old")  # the engine's reading (predec eval / predict / export)
    assert checkpoint.model_config["head_kwargs"] == {"convs": 0}
    assert "head_kwargs" not in checkpoint.model_config["decoder_kwargs"]
    module = load_inference_module(checkpoint)
    torch.testing.assert_close(module.model(x), old(x), rtol=0, atol=0)


def test_the_architecture_check_fills_in_the_recorded_head_defaults(tmp_path):
    recipe = DenseConfig(model=ModelConfig(arch="fpn", encoder="test_resnet", task="depth"))
    tiny(task="depth").save_pretrained(tmp_path / "default")
    check_checkpoint_architecture(load_dense_checkpoint(tmp_path / "default"), recipe)  # {} = the recorded defaults
    recipe.model.head_kwargs = {"channels": 128}
    check_checkpoint_architecture(load_dense_checkpoint(tmp_path / "default"), recipe)
    recipe.model.head_kwargs = {"convs": 0}
    with pytest.raises(ValueError, match=r"model\.head_kwargs: .*needs model\.head_kwargs=\{convs: 2, channels: 128\}"):
        check_checkpoint_architecture(load_dense_checkpoint(tmp_path / "default"), recipe)

    linear_fpn(task="depth").save_pretrained(tmp_path / "old")
    _write_old_config(tmp_path / "old")
    check_checkpoint_architecture(load_dense_checkpoint(tmp_path / "old"), recipe)
    recipe.model.head_kwargs = {}
    with pytest.raises(ValueError, match=r"model\.head_kwargs=\{convs: 0\} in the recipe"):
        check_checkpoint_architecture(load_dense_checkpoint(tmp_path / "old"), recipe)

    saved = {"arch": "unet", "head_kwargs": {"convs": 0, "channels": 64}}  # no blocks: their width does not matter
    assert architecture_mismatch(saved, {"arch": "unet", "head_kwargs": {}}) == []
    assert len(architecture_mismatch(saved, {"arch": "unet", "head_kwargs": {"convs": 1}})) == 1
    assert len(build_model(ModelConfig(arch="fcn", encoder="test_resnet", head_kwargs={"convs": 1}, num_classes=2))
               .head.blocks) == 1  # fmt: skip


def test_a_linear_head_checkpoint_loaded_into_the_default_fpn_says_which_head_it_needs(tmp_path):
    old = linear_fpn(task="depth")
    checkpoint = DenseCheckpoint(path=tmp_path / "last.ckpt", state_dict=old.state_dict())
    with pytest.raises(ValueError, match=r"model\.head_kwargs=\{convs: 0\} in its recipe") as error:
        load_state_checked(tiny(task="depth"), checkpoint, "the recipe")
    assert str(tmp_path / "last.ckpt") in str(error.value) and "missing" in str(error.value)
    load_state_checked(linear_fpn(task="depth"), checkpoint, "the recipe")
    wide = DenseCheckpoint(path=tmp_path / "wide.ckpt", state_dict=tiny(head_kwargs={"channels": 16}).state_dict())
    with pytest.raises(ValueError, match=r"model\.head_kwargs=\{convs: 2, channels: 16\}"):
        load_state_checked(tiny(), wide, "the recipe")


def test_a_train_checkpoint_written_before_head_kwargs_keeps_its_linear_head(tmp_path, capsys):
    """A ``predec train`` checkpoint of a linear-head FPN whose recipe predates ``head_kwargs``: its own recipe
    rebuilds the linear head (``predec eval``); a recipe that leaves the head out is refused naming the fix, which
    then resumes it."""
    from predec.cli import main

    overrides = ["model.encoder=test_resnet", "model.decoder_kwargs={channels: 16}", "data.num_train=2"]
    overrides += ["data.num_val=2", "data.image_size=[32, 32]", "data.batch_size=2", "data.eval_batch_size=2"]
    overrides += ["trainer.val_every_n_steps=null", "trainer.progress_bar=false", "trainer.precision=32-true"]
    overrides += ["schedule.warmup_steps=0"]
    train = ["train", "--config", "dense/synth_seg_fpn"]
    run = tmp_path / "run"
    assert main([*train, "--run-dir", str(run), *overrides, "trainer.max_steps=1", "model.head_kwargs={convs: 0}"]) == 0
    raw = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert raw["hyper_parameters"]["config"]["model"]["head_kwargs"] == {"convs": 0, "channels": None}  # resolved
    del raw["hyper_parameters"]["config"]["model"]["head_kwargs"]  # as written before it existed
    old = tmp_path / "before.ckpt"
    torch.save(raw, old)

    assert load_dense_checkpoint(old).config["model"]["head_kwargs"] == {"convs": 0}
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(old), "--out", str(tmp_path / "eval")]) == 0
    resumed = ["--run-dir", str(tmp_path / "resumed"), "--resume", str(old), *overrides, "trainer.max_steps=2"]
    assert main([*train, *resumed]) == 2
    err = capsys.readouterr().err
    assert "model.head_kwargs={convs: 0}" in err and "Traceback" not in err, err
    assert main([*train, *resumed, "model.head_kwargs={convs: 0}"]) == 0

"""predec.create_model / DenseModel: every arch × task, errors, predict, freezing, save/load round trip."""

import json
import socket

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import torch

import predec
from predec.models.base import DenseModel

ARCHS = ["deeplabv3plus", "fcn", "fpn", "unet", "xnet"]
TASKS = ["depth", "segmentation"]


def tiny(arch: str, task: str, **kwargs) -> DenseModel:
    """A tiny random model: test_resnet encoder, test_convnext ×Net decoder."""
    options = {"decoder": "test_convnext"} if arch == "xnet" else {}
    if task == "segmentation":
        options["num_classes"] = 3
    return predec.create_model(arch, encoder="test_resnet", task=task, **{**options, **kwargs})


def test_list_models():
    assert predec.list_models() == ARCHS
    assert predec.list_models("*net") == [a for a in ARCHS if a.endswith("net")]  # timm's pattern filter
    assert predec.list_models("fp?") == ["fpn"] and predec.list_models("nope*") == []


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_every_arch_and_task(arch, task):
    torch.manual_seed(0)
    model = tiny(arch, task, max_depth=4.0)
    x = torch.randn(2, 3, 64, 96)
    y = model(x)
    assert y.shape == ((2, 1, 64, 96) if task == "depth" else (2, 3, 64, 96))
    if task == "depth":
        assert y.min() > 0 and y.max() <= 4.0
    y.mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    for part in (model.encoder, model.decoder, model.head):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters()) > 0, type(part).__name__


def test_min_depth_bounds_the_output():
    model = tiny("fcn", "depth", min_depth=1.0, max_depth=2.0)
    with torch.no_grad():
        model.head.conv.bias.fill_(-50.0)  # sigmoid ≈ 0: depth ≈ min_depth, never below
        y = model(torch.randn(1, 3, 64, 64))
    assert y.min() >= 1.0 and y.max() < 1.01


def test_bad_arguments_say_what_is_valid():
    with pytest.raises(ValueError, match=r"Unknown architecture 'fpnn'.*Did you mean 'fpn'"):
        predec.create_model("fpnn", encoder="test_resnet", task="depth")
    with pytest.raises(ValueError, match=r"Unknown task 'depht'.*'depth'"):
        predec.create_model("fpn", encoder="test_resnet", task="depht")
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet181'.*resnet18"):
        predec.create_model("fpn", encoder="resnet181", task="depth")
    with pytest.raises(ValueError, match=r"Unknown backbone 'convnext_atoo'.*convnext_atto"):
        predec.create_model("xnet", encoder="test_resnet", decoder="convnext_atoo", task="depth")
    with pytest.raises(ValueError, match=r"needs num_classes"):
        predec.create_model("fpn", encoder="test_resnet", task="segmentation")
    with pytest.raises(ValueError, match=r"arch='xnet' needs decoder="):
        predec.create_model("xnet", encoder="test_resnet", task="depth")
    with pytest.raises(ValueError, match=r"decoder='test_convnext' names a ×Net decoder backbone"):
        predec.create_model("fpn", encoder="test_resnet", decoder="test_convnext", task="depth")
    with pytest.raises(ValueError, match=r"not JSON-serialisable"):
        predec.create_model("fpn", encoder="test_resnet", task="depth", encoder_kwargs={"act_layer": torch.nn.ReLU})


def test_input_size_error_names_the_nearest_valid_sizes():
    model = tiny("fpn", "depth")
    assert model.output_stride == 32
    with pytest.raises(ValueError, match=r"Input size 70×96 .* output stride 32: use 64×96 .* or 96×96"):
        model(torch.randn(1, 3, 70, 96))
    with pytest.raises(ValueError, match=r"Expected images \(B, 3, H, W\)"):
        model(torch.randn(1, 4, 64, 96))


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_predict_pads_and_crops_back(pad_mode):
    torch.manual_seed(0)
    model = tiny("xnet", "segmentation")
    assert model.training
    x = torch.randn(2, 3, 70, 100)
    y = model.predict(x, pad_mode=pad_mode)
    assert y.shape == (2, 3, 70, 100) and not y.requires_grad
    assert model.training  # restored
    padded = torch.nn.functional.pad(x, (0, 28, 0, 26), mode=pad_mode)
    with torch.no_grad():
        expected = model.eval()(padded)[..., :70, :100]
    torch.testing.assert_close(y, expected)
    small = model.predict(torch.randn(1, 3, 20, 30))  # smaller than the padding: reflect falls back to replicate
    assert small.shape == (1, 3, 20, 30)


def test_freeze_encoder():
    model = tiny("fpn", "depth")
    model.freeze_encoder()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    model.train()
    assert not model.encoder.training and model.decoder.training
    bn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert torch.equal(bn.running_mean, before)
    model.unfreeze_encoder()
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())


def test_config_rebuilds_the_architecture():
    model = tiny("xnet", "depth", max_depth=80.0, out_channels=16, encoder_kwargs={"drop_path_rate": 0.1})
    config = model.config
    assert json.loads(json.dumps(config)) == config
    assert config["arch"] == "xnet" and config["decoder"] == "test_convnext" and config["out_channels"] == 16
    assert not any("weights" in key for key in config)
    for rebuilt in (DenseModel(**config), predec.create_model(**config)):
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }


def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args} {kwargs}")


@pytest.mark.parametrize("arch", ["xnet", "fpn"])
def test_save_and_load_reproduce_outputs_offline(tmp_path, monkeypatch, arch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _refuse)
    torch.manual_seed(0)
    weights = tmp_path / "encoder.safetensors"
    safetensors.torch.save_file(tiny(arch, "depth").encoder.model.state_dict(), str(weights))
    model = tiny(arch, "depth", max_depth=10.0, encoder_weights=str(weights))
    model.train()(torch.randn(2, 3, 64, 64))  # move BatchNorm statistics away from their init
    model.eval()
    weights.unlink()  # loading must not resolve encoder/decoder weights again
    model.save_pretrained(tmp_path / "saved")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "saved").iterdir()}
    loaded = predec.from_pretrained(tmp_path / "saved")
    assert not loaded.training and loaded.config == model.config
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    pair = predec.from_pretrained(tmp_path / "saved" / "model.safetensors")  # .safetensors + config.json beside it
    with torch.no_grad():
        assert torch.equal(pair(x), model(x))
    assert callable(loaded.push_to_hub)


def test_a_typoed_local_path_never_goes_to_the_hub(tmp_path, monkeypatch):
    """'runs/modle' (a typo of a local run) is "no such path" with the hf-hub: spelling as a hint, not a Hub query."""
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("from_pretrained went to the network")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_network)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'runs/modle' is not a local .* write 'hf-hub:runs/modle'"):
        predec.from_pretrained("runs/modle")
    with pytest.raises(ValueError, match=r"must read 'hf-hub:org/name'"):
        predec.from_pretrained("hf-hub:just-a-name")


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        predec.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"here' is not a local directory or file \(no such path\)"):
        predec.from_pretrained(tmp_path / "nothing" / "here")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"notes.txt' is a file, not a save_pretrained directory"):
        predec.from_pretrained(tmp_path / "notes.txt")
    tiny("fcn", "depth").save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors"):
        predec.from_pretrained(tmp_path / "saved")


def test_a_torn_saved_model_is_one_error_line_in_every_reader(tmp_path, capsys):
    """A truncated model.safetensors: from_pretrained raises ValueError naming the file; predict, export and eval
    exit 2 with one line naming it (no SafetensorError traceback)."""
    import numpy as np

    from predec.cli import main
    from predec.data.io import write_image

    tiny("fcn", "segmentation").save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors' \(SafetensorError: .*corrupt, truncated"):
        predec.from_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"model\.safetensors' \(SafetensorError: .*corrupt, truncated"):
        predec.DenseModel.from_pretrained(tmp_path / "model")  # the Hub mixin's entry point reads it the same way
    write_image(tmp_path / "image.png", np.zeros((32, 32, 3), np.uint8))
    model = str(tmp_path / "model")
    for argv in (
        ["predict", "--checkpoint", model, str(tmp_path / "image.png"), "--out", str(tmp_path / "predictions")],
        ["export", "--checkpoint", model, "--onnx", str(tmp_path / "model.onnx")],
        ["eval", "--config", "dense/synth_seg_fpn", "--checkpoint", model, "data.num_val=2"],
    ):
        assert main(argv) == 2, argv[0]
        lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(lines) == 1 and lines[0].startswith(f"predec {argv[0]}: error: ") and str(weights) in lines[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoder_kwargs": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}}, "names files, a cache or pre-tr"),
        ({"encoder_kwargs": {"mlp_layer": {"file": "/etc/passwd"}}}, "a dict is not a backbone option"),
        ({"encoder_kwargs": {"checkpoint_path": "model.pkl"}}, r"encoder_kwargs\.checkpoint_path='model\.pkl': an op"),
        ({"encoder_kwargs": {"pretrained": True}}, "names files, a cache or pre-trained weights"),
        ({"encoder_kwargs": {"cache_dir": "hub"}}, "names files, a cache or pre-trained weights"),
        ({"encoder_kwargs": {"channels": [60000, 64]}}, r"encoder_kwargs.channels=60000 is beyond 16384"),
        ({"encoder_kwargs": {"act_layer": "/tmp/elsewhere"}}, "a path or long text is not a backbone option"),
        ({"decoder_kwargs": {"backbone_kwargs": {"depth": 10**9}}}, r"backbone_kwargs\.depth=1000000000 is beyond"),
    ],
)
def test_a_model_file_cannot_pass_arbitrary_backbone_options(tmp_path, options, message):
    """config.json (and a checkpoint's recipe) may only carry bounded, plain backbone options: a crafted file must
    not make loading it open files, write elsewhere or allocate without bound."""
    from predec.engine.dense_checkpoint import load_dense_checkpoint

    tiny("fpn", "segmentation").save_pretrained(tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    config = json.loads(config_file.read_text())
    for key, value in options.items():
        if key == "decoder_kwargs":
            config.update(value)  # config.json spreads the decoder options at the top level
        else:
            config[key] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        predec.from_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=message):
        load_dense_checkpoint(tmp_path / "model")


@pytest.mark.parametrize(
    ("option", "names"),
    [("pretrained", "encoder_weights / decoder_weights"), ("encoder_name", "encoder"), ("classes", "num_classes")],
)
def test_smp_and_timm_habits_are_answered_with_predecs_names(option, names):
    from predec.config import ConfigError

    with pytest.raises(ConfigError, match=rf"Unknown option model\.decoder_kwargs\.{option} for FPN\..*{names}"):
        predec.create_model("fpn", encoder="test_resnet", task="segmentation", num_classes=3, **{option: 1})


def test_save_pretrained_files_follow_the_umask(tmp_path):
    """safetensors writes its file owner-only (0600); a saved model's files are readable as any other file."""
    import os

    old = os.umask(0o022)
    try:
        tiny("fpn", "segmentation").save_pretrained(tmp_path / "model")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "model" / name).stat().st_mode & 0o777 == 0o644, name


def test_predict_takes_raw_images_and_normalises_them_as_training_does(tmp_path):
    """PIL images, uint8 arrays and uint8 tensors go through model.preprocess (the model's recorded mean/std, the
    eval transform's ImageNet normalisation); raw 0-255 floats are predicted with a warning."""
    import warnings

    from PIL import Image

    from predec.data.sample import make_sample
    from predec.data.transforms import eval_transform

    model = tiny("fpn", "segmentation").eval()
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    want = model.predict(eval_transform()(make_sample(image))["image"][None])
    raw = (Image.fromarray(image), image, torch.from_numpy(image).permute(2, 0, 1), [image, image])
    for x in raw:
        got = model.predict(x)
        torch.testing.assert_close(got[:1], want, atol=1e-5, rtol=1e-5)
    assert model.predict([image, image]).shape[0] == 2
    with pytest.warns(UserWarning, match="look like raw 0-255 pixels"):
        model.predict(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(want.new_zeros(1, 3, 40, 56))  # normalised input: no warning
    with pytest.raises(TypeError, match="must be uint8"):
        model.predict(image.astype(np.float64))
    with pytest.raises(ValueError, match="different sizes"):
        model.predict([image, image[:32]])
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["mean"] == [0.485, 0.456, 0.406] and config["std"] == [0.229, 0.224, 0.225]
    assert predec.from_pretrained(tmp_path / "model").mean == model.mean
    with pytest.raises(ValueError, match="one value per input channel"):
        predec.create_model("fpn", encoder="test_resnet", task="depth", mean=[0.5, 0.5])

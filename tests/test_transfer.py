"""Export of pre-training checkpoints to timm, detectron2 (Mask R-CNN R-FPN) and mmseg (FCN) key layouts."""

from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch

from predec.cli import main
from predec.config import load_config
from predec.models.weights import save_state_dict
from predec.pretrain.config import PretrainConfig
from predec.pretrain.decon import DeConModule
from predec.pretrain.transfer import export_checkpoint, pretrained_parts

TINY_HEADS = ["ssl.num_prototypes=8", "ssl.hidden_dim=16", "ssl.out_dim=8", "trainer.precision=32-true"]


def _pretraining_file(tmp_path, arch: str, encoder: str = "resnet18"):
    """A pre-training checkpoint of ``encoder`` + ``arch`` whose teacher differs from its student."""
    recipe = "pretrain/synth_decon_sl"
    config = load_config(
        recipe, [*TINY_HEADS, f"model.encoder={encoder}", f"model.arch={arch}", "model.decoder_kwargs={channels: 16}"],
        schema=PretrainConfig,
    )  # fmt: skip
    torch.manual_seed(0)
    module = DeConModule(config)
    with torch.no_grad():
        for param in module.teacher.parameters():
            param.add_(torch.randn_like(param))
        for name, buffer in module.teacher.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-1, 1)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 3}, path)  # the Lightning checkpoint's layout
    return path, module


@pytest.fixture(scope="module")
def fpn_run(tmp_path_factory):
    return _pretraining_file(tmp_path_factory.mktemp("fpn"), "fpn")


@pytest.fixture(scope="module")
def fcn_run(tmp_path_factory):
    return _pretraining_file(tmp_path_factory.mktemp("fcn"), "fcn")


def _resnet18_detectron2_keys() -> set[str]:
    """detectron2's ResNet-18 (BasicBlock) + FPN backbone keys, written out from its module layout."""
    norm = ("weight", "bias", "running_mean", "running_var")
    keys = {"backbone.bottom_up.stem.conv1.weight"} | {f"backbone.bottom_up.stem.conv1.norm.{n}" for n in norm}
    for stage in (2, 3, 4, 5):
        for block in (0, 1):
            convs = ["conv1", "conv2"] + (["shortcut"] if block == 0 and stage > 2 else [])
            for conv in convs:
                prefix = f"backbone.bottom_up.res{stage}.{block}.{conv}"
                keys |= {f"{prefix}.weight"} | {f"{prefix}.norm.{n}" for n in norm}
        for kind in ("lateral", "output"):
            keys |= {f"backbone.fpn_{kind}{stage}.weight"} | {f"backbone.fpn_{kind}{stage}.norm.{n}" for n in norm}
    return keys


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_timm_export_is_the_teacher_encoder_in_timm_keys(tmp_path, fpn_run, suffix):
    path, module = fpn_run
    if suffix == ".safetensors":  # the run's weights.safetensors form
        path = tmp_path / "weights.safetensors"
        save_state_dict(module.pretrained_state_dict(), path)
    out = export_checkpoint(path, tmp_path / "encoder.safetensors", "timm")
    state = safetensors.torch.load_file(str(out))
    model = timm.create_model("resnet18", pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    for key, value in module.teacher.encoder.model.state_dict().items():
        assert torch.equal(state[key], value), key
    student = safetensors.torch.load_file(str(export_checkpoint(path, tmp_path / "s.safetensors", "timm", "student")))
    assert torch.equal(student["conv1.weight"], module.student.encoder.model.conv1.weight)
    assert not torch.equal(student["conv1.weight"], state["conv1.weight"])


def test_detectron2_export_has_mask_rcnn_backbone_keys(tmp_path, fpn_run):
    path, module = fpn_run
    out = tmp_path / "d2.pth"
    assert main(["pretrain", "--export", "detectron2", "--checkpoint", str(path), "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    state = saved["model"]
    assert set(state) == _resnet18_detectron2_keys()
    encoder, fpn = module.teacher.encoder.model, module.teacher.decoder
    assert torch.equal(state["backbone.bottom_up.stem.conv1.weight"], encoder.conv1.weight)
    assert torch.equal(state["backbone.bottom_up.stem.conv1.norm.running_mean"], encoder.bn1.running_mean)
    assert torch.equal(state["backbone.bottom_up.res3.0.shortcut.weight"], encoder.layer2[0].downsample[0].weight)
    assert torch.equal(state["backbone.bottom_up.res3.0.shortcut.norm.bias"], encoder.layer2[0].downsample[1].bias)
    assert torch.equal(state["backbone.bottom_up.res5.1.conv2.norm.weight"], encoder.layer4[1].bn2.weight)
    assert torch.equal(state["backbone.fpn_lateral2.weight"], fpn.fpn_lateral2.weight)
    assert torch.equal(state["backbone.fpn_output5.norm.running_mean"], fpn.fpn_output5.norm.running_mean)


def test_mmseg_export_has_backbone_and_decode_head_keys(tmp_path, fcn_run):
    path, module = fcn_run
    state = torch.load(export_checkpoint(path, tmp_path / "mmseg.pth", "mmseg"), weights_only=True)["state_dict"]
    encoder, fcn = module.teacher.encoder.model, module.teacher.decoder
    expected = {f"backbone.{k}" for k in encoder.state_dict()} | {f"decode_head.{k}" for k in fcn.state_dict()}
    assert set(state) == expected
    assert "decode_head.convs.0.conv.weight" in state and "decode_head.convs.1.bn.running_var" in state
    assert torch.equal(state["backbone.layer1.0.conv1.weight"], encoder.layer1[0].conv1.weight)
    assert torch.equal(state["decode_head.convs.0.bn.weight"], fcn.convs[0].bn.weight)


def test_exports_reject_what_the_layout_cannot_hold(tmp_path, fcn_run):
    fcn_path, _ = fcn_run
    with pytest.raises(ValueError, match="takes an FPN decoder"):
        export_checkpoint(fcn_path, tmp_path / "d2.pth", "detectron2")
    with pytest.raises(ValueError, match=r"written as \.pth"):
        export_checkpoint(fcn_path, tmp_path / "d2.safetensors", "detectron2")
    deep_stem, _ = _pretraining_file(tmp_path / "deep", "fpn", encoder="test_resnet")  # conv1.0/1.1: a deep stem
    with pytest.raises(ValueError, match="plain ResNet encoder"):
        export_checkpoint(deep_stem, tmp_path / "d2.pth", "detectron2")
    export_checkpoint(deep_stem, tmp_path / "timm.safetensors", "timm")  # any timm encoder exports to timm
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"conv1.weight": torch.zeros(1)}, str(foreign))
    with pytest.raises(ValueError, match="not a predec pre-training checkpoint"):
        pretrained_parts(foreign)

"""The weight resolver: every source, key reports, strictness, in_chans adaptation, safe loading, no network."""

import logging
import socket

import huggingface_hub
import pytest
import safetensors.torch
import timm
import timm.models._hub
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

import predec
from predec.models.encoders import TimmBackbone
from predec.models.weights import load_weights, read_state_dict


def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args} {kwargs}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every download function and socket connection raises: a test passing under this touched no network."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _refuse)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", _refuse)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", _refuse)


def timm_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random timm classification state dict (classifier included), as users save one."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model(name).state_dict().items()}


def save(state: dict, path) -> str:
    if str(path).endswith(".safetensors"):
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def assert_holds(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Every tensor of ``module`` equals the file's tensor of the same (prefixed) name."""
    own = module.state_dict()
    assert own, "empty module"
    for key, value in own.items():
        assert torch.equal(value, state[prefix + key]), key


@pytest.mark.parametrize("wrapper", ["safetensors", "pth", "pth:state_dict", "pt:model", "bin:module."])
def test_timm_file_loads_into_encoder(tmp_path, wrapper):
    state = timm_state_dict("test_resnet")
    suffix, _, wrap = wrapper.partition(":")
    content = {f"module.{k}": v for k, v in state.items()} if wrap == "module." else state
    content = {wrap: content, "epoch": 3} if wrap in ("state_dict", "model") else content
    path = save(content, tmp_path / f"w.{suffix}")
    encoder = TimmBackbone("test_resnet")
    report = load_weights(encoder, path, part="encoder")
    assert_holds(encoder.model, state)
    assert report.ok and report.target.startswith("encoder.model")
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]  # classifier: expected, silent


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
@pytest.mark.parametrize("decoder", ["test_resnet", "test_convnext"])
def test_timm_files_give_identical_xnet_encoder_and_decoder(tmp_path, decoder, suffix):
    enc_state, dec_state = timm_state_dict("test_convnext", seed=1), timm_state_dict(decoder, seed=2)
    model = predec.create_model(
        "xnet",
        encoder="test_convnext",
        decoder=decoder,
        task="depth",
        encoder_weights=save(enc_state, tmp_path / f"enc.{suffix}"),
        decoder_weights=save(dec_state, tmp_path / f"dec.{suffix}"),
    )
    assert_holds(model.encoder.model, enc_state)
    assert_holds(model.decoder.backbone.model, dec_state)


def pretraining_checkpoint(tmp_path, suffix: str):
    """A predec pre-training checkpoint (teacher and student, encoder and ×Net decoder) and its two models."""
    models = {}
    for seed, role in enumerate(("teacher", "student")):
        torch.manual_seed(seed)
        models[role] = predec.create_model("xnet", encoder="test_resnet", decoder="test_resnet", task="depth")
    flat = {
        f"{role}.{part}.{k}": v
        for role, m in models.items()
        for part in ("encoder", "decoder")
        for k, v in getattr(m, part).state_dict().items()
    }
    content = flat if suffix == "safetensors" else {"state_dict": flat, "epoch": 2, "global_step": 10}
    return save(content, tmp_path / f"pretrain.{suffix}"), models


@pytest.mark.parametrize("suffix", ["ckpt", "safetensors"])
def test_pretraining_checkpoint_teacher_by_default_student_on_request(tmp_path, suffix):
    path, models = pretraining_checkpoint(tmp_path, suffix)
    for spec, role in [(path, "teacher"), (f"{path}#student", "student"), (f"{path}#teacher", "teacher")]:
        model = predec.create_model(
            "xnet",
            encoder="test_resnet",
            decoder="test_resnet",
            task="depth",
            encoder_weights=spec,
            decoder_weights=spec,
        )
        for part in ("encoder", "decoder"):
            assert_holds(getattr(model, part), getattr(models[role], part).state_dict())


def test_whole_model_file_gives_its_parts_and_loads_whole(tmp_path):
    torch.manual_seed(3)
    source = predec.create_model("fpn", encoder="test_resnet", task="segmentation", num_classes=4)
    path = save(source.state_dict(), tmp_path / "model.safetensors")
    model = predec.create_model(
        "fpn", encoder="test_resnet", task="segmentation", num_classes=4, encoder_weights=path, decoder_weights=path
    )
    assert_holds(model.encoder, source.encoder.state_dict())
    assert_holds(model.decoder, source.decoder.state_dict())
    other = predec.create_model("fpn", encoder="test_resnet", task="segmentation", num_classes=4)
    assert load_weights(other, path, part="model").ok
    assert_holds(other, source.state_dict())


def test_mismatched_shapes_strict_raises_with_shapes_lenient_reports(tmp_path, caplog):
    state = timm_state_dict("test_resnet")
    key = "layer1.0.conv2.weight"
    wrong = dict(state, **{key: torch.zeros(5, 3, 3, 3)})
    del wrong["bn1.bias"]
    wrong["extra.weight"] = torch.zeros(2)
    path = save(wrong, tmp_path / "wrong.safetensors")
    expected_shape = tuple(state[key].shape)
    with pytest.raises(ValueError) as err:
        predec.create_model("fpn", encoder="test_resnet", task="depth", encoder_weights=path)
    text = str(err.value)
    assert f"{key} (weights (5, 3, 3, 3) vs model {expected_shape})" in text
    assert "missing: bn1.bias" in text and "unexpected: extra.weight" in text and "wrong.safetensors" in text

    encoder = TimmBackbone("test_resnet")
    with caplog.at_level(logging.WARNING, logger="predec.models.weights"):
        report = load_weights(encoder, path, part="encoder", strict=False)
    assert report.mismatched == [(key, (5, 3, 3, 3), expected_shape)]
    assert report.missing == ["bn1.bias"] and report.unexpected == ["extra.weight"]
    assert key in caplog.text
    assert torch.equal(encoder.model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])  # the rest loaded


def test_file_of_another_model_names_the_keys(tmp_path):
    path = save(timm_state_dict("test_convnext"), tmp_path / "convnext.pth")
    with pytest.raises(ValueError, match=r"No key of .*convnext.pth matches the encoder"):
        load_weights(TimmBackbone("test_resnet"), path, part="encoder")


def test_in_chans_adapted_as_timm_does(tmp_path):
    state = timm_state_dict("test_resnet")
    path = save(state, tmp_path / "rgb.safetensors")
    encoder = TimmBackbone("test_resnet", in_chans=4)
    report = load_weights(encoder, path, part="encoder")
    key = encoder.first_conv_keys[0]
    assert report.adapted == [key]
    expected = timm.models.adapt_input_conv(4, state[key])
    assert torch.allclose(encoder.model.state_dict()[key], expected)


class _NotATensor:
    pass


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.safetensors", b"definitely not safetensors"),
        ("garbage.pth", b"\x80\x02 not a pickle either"),
        ("truncated.safetensors", None),
        ("unsafe.pth", _NotATensor()),
    ],
)
def test_unreadable_files_are_named(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        save(timm_state_dict("test_resnet"), path)
        path.write_bytes(path.read_bytes()[:500])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"state_dict": timm_state_dict("test_resnet"), "obj": content}, path)  # needs unsafe unpickling
    with pytest.raises(ValueError, match=f"Cannot read weights file .*{name}"):
        read_state_dict(path)


def test_bad_specs(tmp_path):
    encoder = TimmBackbone("test_resnet")
    with pytest.raises(FileNotFoundError, match=r"missing.safetensors"):
        load_weights(encoder, str(tmp_path / "missing.safetensors"), part="encoder")
    with pytest.raises(ValueError, match=r"Cannot interpret weight spec 'no_such_thing'"):
        load_weights(encoder, "no_such_thing", part="encoder")
    path = save(timm_state_dict("test_resnet"), tmp_path / "timm.safetensors")
    with pytest.raises(ValueError, match=r"no 'student\.\*' keys"):
        load_weights(encoder, f"{path}#student", part="encoder")
    fpn = predec.create_model("fpn", encoder="test_resnet", task="depth").decoder
    with pytest.raises(ValueError, match=r"only encoders and the ×Net decoder are timm models"):
        load_weights(fpn, True, part="decoder")
    assert load_weights(encoder, None, part="encoder") is None


def test_timm_pretrained_and_tags_come_from_the_hub_cache(tmp_path, monkeypatch):
    state = timm_state_dict("test_resnet", seed=5)
    path = save(state, tmp_path / "model.safetensors")
    calls = []

    def cached_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return path

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", cached_download)
    for spec in (True, "pretrained", "test_resnet.r160_in1k"):
        encoder = TimmBackbone("test_resnet")
        assert load_weights(encoder, spec, part="encoder").ok
        assert_holds(encoder.model, state)
    assert calls[-1] == ("timm/test_resnet.r160_in1k", "model.safetensors")


def test_hub_failure_says_how_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("not in the local cache and HF_HUB_OFFLINE is set")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    encoder = TimmBackbone("test_resnet")
    for spec in (True, "hf-hub:someone/encoder"):
        with pytest.raises(RuntimeError, match=r"pass the local file instead, e.g. encoder_weights="):
            load_weights(encoder, spec, part="encoder")


def test_hf_hub_spec_reads_model_safetensors(tmp_path, monkeypatch):
    state = timm_state_dict("test_resnet", seed=6)
    path = save(state, tmp_path / "model.safetensors")
    calls = []

    def cached_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached_download)
    encoder = TimmBackbone("test_resnet")
    assert load_weights(encoder, "hf-hub:someone/encoder", part="encoder").ok
    assert_holds(encoder.model, state)
    assert calls == [("someone/encoder", "model.safetensors")]


def test_concat_mixing_xnet_stem_is_widened_by_the_decoder_not_adapted(tmp_path):
    """×Net with mixing="concat" zero-pads the 3-channel stem itself; the resolver hands the weight over unchanged."""
    state = timm_state_dict("test_resnet", seed=7)
    path = save(state, tmp_path / "dec.safetensors")
    model = predec.create_model(
        "xnet", encoder="test_resnet", decoder="test_resnet", task="depth", mixing="concat", decoder_weights=path
    )
    key = model.decoder.backbone.first_conv_keys[0]
    stem = model.decoder.backbone.model.state_dict()[key]
    assert stem.shape[1] == 6
    assert torch.equal(stem[:, :3], state[key]) and not stem[:, 3:].any()


def test_an_unreachable_hub_is_read_from_the_cache_at_once_not_retried(monkeypatch):
    """With no route to the Hub, timm's download runs in offline mode (the local cache only) and the error says so,
    instead of a minute of retries; the Hub's own message ends with a period that is not doubled."""
    import socket

    from huggingface_hub import constants

    import predec.models.weights as weights

    def no_route(*args, **kwargs):
        raise OSError("Name or service not known")

    seen = {}

    def fake_create_model(tag, pretrained):
        seen["offline"] = constants.HF_HUB_OFFLINE
        raise RuntimeError("cannot find the requested files in the local cache.")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setattr(weights.timm, "create_model", fake_create_model)
    assert not weights.hub_reachable(timeout=0.1)
    with pytest.raises(RuntimeError, match="unreachable from this machine") as info:
        weights._timm_state_dict("resnet18", "encoder")
    assert seen["offline"] is True and constants.HF_HUB_OFFLINE is False  # restored after
    assert "local cache. To load" in str(info.value) and ".." not in str(info.value)

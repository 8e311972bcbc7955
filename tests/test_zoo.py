"""The model zoo: names resolve to verified files, corrupt files are refused by name, a tiny build end to end."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

import predec
from predec.cli import main
from predec.models import load_weights
from predec.models.encoders import TimmBackbone
from predec.zoo.build import build_order, dependencies, load_recipe
from predec.zoo.registry import (
    ZOO_DIR_ENV,
    ZooError,
    find_entry,
    package_dir,
    recipe_names,
    resolve,
    search_dirs,
    sha256_file,
)

TINY_BUILD = [
    "trainer.max_steps=2",
    "trainer.log_every_n_steps=1",
    "data.num_train=16",
    "data.num_val=8",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.image_size=[32,32]",
    "data.view_size=32",
    "schedule.warmup_steps=1",
]


def _fake_entry(directory, name="tiny-cls", encoder="test_resnet"):
    """A zoo entry made by hand: a timm classifier's weights and a manifest with their sha256."""
    import timm

    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.safetensors"
    model = timm.create_model(encoder, num_classes=4)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    manifest = {
        "name": name,
        "method": "supervised",
        "model": {"encoder": encoder, "encoder_kwargs": {}},
        "metric": {"name": "top1", "value": 0.5, "classes": ["a", "b", "c", "d"]},
        "file": weights.name,
        "bytes": weights.stat().st_size,
        "sha256": sha256_file(weights),
    }
    (directory / f"{name}.json").write_text(json.dumps(manifest))
    return weights, model


def test_shipped_recipes_are_valid_and_ordered():
    """Every zoo recipe loads, carries its entry name, and SSL entries start from the classification entry."""
    names = recipe_names()
    assert names, "no zoo recipes shipped"
    for name in names:
        assert load_recipe(name).name == name
    order = build_order(names)
    for name in names:
        for dependency in dependencies(load_recipe(name)).values():
            assert order.index(dependency) < order.index(name)
    xnet = load_recipe("synth-resnet18h-xnet-decon")  # ×Net × DeCon: encoder and decoder backbone from the classifier
    assert (xnet.method, xnet.model.arch, xnet.model.decoder) == ("decon-sl", "xnet", "resnet18")
    assert dependencies(xnet) == {
        "model.encoder_weights": "synth-resnet18h-cls",
        "model.decoder_weights": "synth-resnet18h-cls",
    }


def test_shipped_entries_verify_and_load():
    """Each shipped entry's file matches its manifest's sha256 and loads by name into the architecture it names."""
    for name in recipe_names():
        entry = find_entry(name, [package_dir()])
        assert entry.verify().is_file()
        model = entry.model
        encoder = TimmBackbone(model["encoder"], **model["encoder_kwargs"])
        report = load_weights(encoder, f"predec:{name}", part="encoder")
        assert report is not None and report.ok and report.loaded


def test_predec_names_resolve_through_create_model(tmp_path, monkeypatch):
    """encoder_weights / decoder_weights accept 'predec:NAME' from $PREDEC_ZOO_DIR, searched before the package."""
    weights, classifier = _fake_entry(tmp_path)
    monkeypatch.setenv(ZOO_DIR_ENV, str(tmp_path))
    assert search_dirs()[0] == tmp_path
    assert resolve("predec:tiny-cls") == weights
    model = predec.create_model(
        "xnet", encoder="test_resnet", decoder="test_resnet", task="depth",
        encoder_weights="predec:tiny-cls", decoder_weights="predec:tiny-cls",
    )  # fmt: skip
    expected = classifier.state_dict()["conv1.0.weight"]
    assert torch.equal(model.encoder.model.conv1[0].weight, expected)
    assert torch.equal(model.decoder.backbone.model.conv1[0].weight, expected)


def test_corrupt_missing_and_unknown_entries_are_refused_by_name(tmp_path, monkeypatch):
    weights, _ = _fake_entry(tmp_path)
    monkeypatch.setenv(ZOO_DIR_ENV, str(tmp_path))
    encoder = TimmBackbone("test_resnet")
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(
        ZooError, match=r"tiny-cls.*tiny-cls\.safetensors has sha256 .*corrupt.*predec zoo build tiny-cls"
    ):
        load_weights(encoder, "predec:tiny-cls", part="encoder")
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(ZooError, match=r"truncated"):
        resolve("tiny-cls")
    weights.unlink()
    with pytest.raises(ZooError, match=r"tiny-cls\.safetensors is missing"):
        resolve("tiny-cls")
    with pytest.raises(ZooError, match=r"Unknown zoo entry 'tiny-clz'.*Did you mean 'tiny-cls'"):
        resolve("tiny-clz")


def test_entry_for_another_architecture_names_what_it_fits(tmp_path, monkeypatch):
    _fake_entry(tmp_path, encoder="test_resnet")
    monkeypatch.setenv(ZOO_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=r"zoo entry 'tiny-cls' was trained for encoder='test_resnet'"):
        load_weights(TimmBackbone("resnet18"), "predec:tiny-cls", part="encoder")


@pytest.mark.slow
def test_tiny_zoo_build_end_to_end(tmp_path, capsys):
    """`predec zoo build --all` with tiny overrides: every entry built into --out, in dependency order, each
    verified; the SSL entries record the classification entry they started from; `zoo list` sees them."""
    out = tmp_path / "zoo"
    code = main(["zoo", "build", *TINY_BUILD, "--all", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    for name in recipe_names():
        entry = find_entry(name, [out])
        entry.verify()
        manifest = entry.manifest
        assert manifest["steps"] == 2 and manifest["overrides"] == TINY_BUILD
        assert manifest["command"].startswith(f"predec zoo build {name} trainer.max_steps=2")
        assert manifest["curve"]["train/loss"] and manifest["machine"]["torch"] == torch.__version__
        for key, dependency in dependencies(load_recipe(name)).items():
            assert manifest["inputs"][key] == {"entry": dependency, "sha256": find_entry(dependency, [out]).sha256}
            assert manifest["config"]["model"][key.split(".", 1)[1]] == f"predec:{dependency}"
        state = safetensors.torch.load_file(str(entry.file))
        assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    capsys.readouterr()
    assert main(["zoo", "list", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(recipe_names()) <= set(listed)


def test_python_lists_the_entries_with_a_pattern():
    import predec.zoo

    names = predec.zoo.list()
    assert "synth-resnet18h-cls" in names and names == sorted(names)
    assert predec.zoo.list("*decon*") == [n for n in names if "decon" in n] and predec.zoo.list("nope*") == []

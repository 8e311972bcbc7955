"""Recipe loading: YAML + dotted overrides, schema validation, round trip through the saved config."""

from __future__ import annotations

import re

import pytest

from predec.config import (
    ConfigError,
    DenseConfig,
    apply_overrides,
    diff_configs,
    find_recipe,
    list_recipes,
    load_config,
    save_config,
    to_dict,
)

RECIPE = """
name: toy
model: {arch: fpn, encoder: test_resnet, task: segmentation, num_classes: 5}
optim: {name: sgd, lr: 0.01}
trainer: {max_steps: 20}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE)
    return path


def test_load_defaults_and_values(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, DenseConfig)
    assert cfg.model.encoder == "test_resnet" and cfg.model.num_classes == 5
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.01
    assert cfg.optim.weight_decay == 0.01  # default kept
    assert cfg.trainer.max_steps == 20


def test_overrides_parsed_with_yaml(recipe):
    cfg = load_config(
        recipe,
        [
            "optim.lr=1e-4",
            "eval.scales=[0.5, 1.0]",
            "model.decoder=null",
            "trainer.devices=auto",
            "optim.betas=[0.8, 0.9]",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.eval.scales == [0.5, 1.0]
    assert cfg.model.decoder is None
    assert cfg.trainer.devices == "auto"
    assert cfg.optim.betas == (0.8, 0.9)


def test_int_accepted_for_float_but_not_bool_for_int(recipe):
    assert load_config(recipe, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"trainer\.max_steps.*expected int.*bool"):
        load_config(recipe, ["trainer.max_steps=true"])


def test_wrong_type_names_key_and_type(recipe):
    with pytest.raises(ConfigError, match=r"'optim\.lr': expected float, got str 'fast'") as err:
        load_config(recipe, ["optim.lr=fast"])
    assert str(recipe) in str(err.value)
    with pytest.raises(ConfigError, match=r"'data\.crop_size\[1\]': expected int"):
        load_config(recipe, ["data.crop_size=[32, x]"])
    with pytest.raises(ConfigError, match=r"'model': expected a mapping"):
        load_config(recipe, ["model=3"])


def test_unknown_key_lists_valid_keys_and_close_match(recipe):
    with pytest.raises(ConfigError) as err:
        load_config(recipe, ["optim.lrr=0.1"])
    message = str(err.value)
    assert "optim.lrr" in message and "Did you mean 'lr'" in message
    assert "weight_decay" in message and "momentum" in message  # valid keys listed
    with pytest.raises(ConfigError, match=r"Unknown config key 'trainr'.*Did you mean 'trainer'"):
        load_config({"trainr": {}})


def test_literal_choices(recipe):
    with pytest.raises(ConfigError, match=r"'optim\.name': 'adam' is not one of 'adamw', 'sgd', 'lars'"):
        load_config(recipe, ["optim.name=adam"])


def test_bad_override_syntax(recipe):
    with pytest.raises(ConfigError, match=r"key\.subkey=value"):
        load_config(recipe, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_save_and_reload_round_trip(recipe, tmp_path):
    cfg = load_config(recipe, ["schedule.milestones=[5, 10]", "model.decoder_kwargs.width=16"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert to_dict(again)["model"]["decoder_kwargs"] == {"width": 16}
    assert diff_configs(to_dict(cfg), to_dict(load_config(path, ["seed=3"]))) == ["seed"]


def test_shipped_recipes_found_by_name():
    names = list_recipes()
    assert names, "no recipes shipped in predec/configs"
    assert find_recipe(names[0]).resolve() == find_recipe(f"configs/{names[0]}.yaml").resolve()
    with pytest.raises(ConfigError, match="Shipped:"):
        find_recipe("no/such_recipe")


def test_list_shows_each_commands_own_recipes(capsys):
    """``predec train --list`` lists the dense recipes only, ``predec pretrain --list`` the pre-training ones
    (the zoo's recipes included: they are pre-training recipes too)."""
    from predec.cli import main

    for command, prefixes in (("train", ("dense/",)), ("pretrain", ("pretrain/", "zoo/"))):
        assert main([command, "--list"]) == 0
        listed = capsys.readouterr().out.split()
        assert listed == [name for name in list_recipes() if name.startswith(prefixes)]
        assert listed and all(name.startswith(prefixes) for name in listed)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="Cannot read recipe"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(path)


def test_slide_evaluation_without_a_window_is_refused_when_the_recipe_loads():
    """Not after training: the protocol is checked at load time, naming the key and a valid value."""
    with pytest.raises(ConfigError, match=r"eval.mode='slide' needs eval.crop_size as \[H, W\].*got None"):
        load_config("dense/synth_seg_fpn", ["eval.mode=slide"])
    with pytest.raises(ConfigError, match=r"needs eval.stride .* got \[0, 4\]"):
        load_config("dense/synth_seg_fpn", ["eval.mode=slide", "eval.crop_size=[32,32]", "eval.stride=[0,4]"])
    config = load_config("dense/synth_seg_fpn", ["eval.mode=slide", "eval.crop_size=[32,32]", "eval.stride=[16,16]"])
    assert config.eval.crop_size == [32, 32]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.decoder_kwargs={chanels: 64}"],
            r"Unknown option model.decoder_kwargs.chanels for FPN. "
            r"Did you mean 'channels'\? Valid options: ",
        ),
        (["data.reader_kwargs={bogus: 1}"], r"data.reader_kwargs: unknown render option\(s\) \['bogus'\]; valid"),
    ],
)
def test_unknown_model_and_reader_options_are_one_error_line(tmp_path, capsys, overrides, message):
    """Not a TypeError traceback from deep inside the build: exit 2 naming the config key and the valid options."""
    from predec.cli import main

    argv = ["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(tmp_path), "model.encoder=test_resnet"]
    assert (
        main(
            [*argv, "data.num_train=4", "data.num_val=2", "trainer.max_steps=2", "schedule.warmup_steps=1", *overrides]
        )
        == 2
    )
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.accelerator=gpu", r"trainer.accelerator='gpu' .*No supported gpu backend found!.* CUDA GPU"),
        ("trainer.devices=abc", r"trainer.devices='abc' .*should be an int > 0"),
    ],
)
def test_an_unusable_accelerator_or_device_count_is_one_error_line_and_a_failed_status(
    tmp_path, capsys, override, message
):
    """Lightning's MisconfigurationException / TypeError become exit 2 naming the keys; status.json says failed."""
    import json

    from predec.cli import main

    argv = ["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(tmp_path), "model.encoder=test_resnet"]
    assert main([*argv, "data.num_train=4", "trainer.max_steps=2", "schedule.warmup_steps=1", override]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err)
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "failed"

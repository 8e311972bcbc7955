"""The shipped dense recipes parse, carry the papers' settings, and build their models (tiny stand-in backbones)."""

from __future__ import annotations

import pytest
import torch

from predec.config import DenseConfig, list_recipes, load_config
from predec.engine.datamodule import check_task
from predec.engine.dense import DenseModule
from predec.optim import check_schedule

DENSE_RECIPES = [name for name in list_recipes() if name.startswith("dense/")]
PAPER_RECIPES = [name for name in DENSE_RECIPES if not name.startswith("dense/synth_")]

# Tiny random-init stand-ins for the papers' backbones (the files keep the real timm names).
STAND_INS = ["model.encoder=test_resnet", "model.encoder_weights=null", "model.decoder_weights=null"]


def test_expected_recipes_are_shipped():
    expected = {
        "dense/synth_depth_xnet",
        "dense/synth_depth_fpn",
        "dense/synth_seg_xnet",
        "dense/synth_seg_fpn",
        "dense/xnet_nyu_swinl_convnextv2t",
        "dense/xnet_kitti_swinl_convnextb",
        "dense/xnet_ade20k_swinl_convnextl",
        "dense/xnet_cityscapes_swinl_convnextl",
        "dense/decon_voc_fcn_d6",
        "dense/decon_cityscapes_fcn_d6",
    }
    assert expected <= set(DENSE_RECIPES)


@pytest.mark.parametrize("name", DENSE_RECIPES)
def test_recipe_is_consistent(name):
    cfg = load_config(name)
    assert isinstance(cfg, DenseConfig)
    check_task(cfg.data, cfg.model.task, cfg.model.num_classes)
    check_schedule(cfg.schedule, cfg.trainer.max_steps)
    assert cfg.name == name.removeprefix("dense/")


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipe_builds_with_stand_in_backbones(name):
    overrides = list(STAND_INS)
    if load_config(name).model.arch == "xnet":
        overrides.append("model.decoder=test_convnext")
    cfg = load_config(name, overrides)
    module = DenseModule(cfg)
    module.eval()
    with torch.no_grad():
        out = module(torch.randn(1, 3, 64, 64))
    expected_channels = 1 if cfg.model.task == "depth" else cfg.model.num_classes
    assert out.shape == (1, expected_channels, 64, 64)
    optimizers = module.configure_optimizers()
    assert optimizers["lr_scheduler"]["interval"] == "step"


def test_paper_settings_are_the_papers():
    nyu = load_config("dense/xnet_nyu_swinl_convnextv2t")
    assert (nyu.model.encoder, nyu.model.decoder) == (
        "swin_large_patch4_window12_384.ms_in22k_ft_in1k",
        "convnextv2_tiny.fcmae_ft_in22k_in1k",
    )
    assert (nyu.eval.depth_crop, nyu.eval.max_depth, nyu.model.max_depth) == ("eigen", 10.0, 10.0)
    assert nyu.schedule.name == "poly" and nyu.trainer.max_steps == 80000
    kitti = load_config("dense/xnet_kitti_swinl_convnextb")
    assert kitti.model.decoder.startswith("convnext_base") and kitti.eval.depth_crop == "garg"
    assert kitti.model.max_depth == 80.0 and kitti.data.reader_kwargs == {"kb_crop": True}
    for name, classes in (("ade20k", 150), ("cityscapes", 19)):
        cfg = load_config(f"dense/xnet_{name}_swinl_convnextl")
        assert cfg.model.decoder.startswith("convnext_large") and cfg.model.num_classes == classes
    voc = load_config("dense/decon_voc_fcn_d6")
    assert (voc.optim.name, voc.optim.lr, voc.optim.weight_decay) == ("sgd", 0.003, 1e-4)
    assert voc.schedule.milestones == [21000, 27000] and voc.trainer.max_steps == 30000
    assert voc.data.batch_size * voc.trainer.devices == 16
    assert voc.model.decoder_kwargs["dilation"] == 6 and voc.model.encoder_kwargs["output_stride"] == 16
    city = load_config("dense/decon_cityscapes_fcn_d6")
    assert (city.optim.lr, city.schedule.milestones, city.trainer.max_steps) == (0.01, [63000, 81000], 90000)
    assert city.eval.mode == "slide" and city.eval.crop_size == [768, 768] and city.eval.stride == [512, 512]

"""TimmBackbone: channels and strides from feature_info, non-square inputs, pruned keys, bad names."""

import pytest
import timm
import torch

import predec
from predec.models.encoders import TimmBackbone

# Tiny random-init members of each family (timm_kwargs shrink depths/widths where no test_* model exists).
FAMILIES = {
    "resnet": ("test_resnet", {}),
    "convnext": ("test_convnext", {}),
    "convnextv2": ("convnextv2_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}),
    "swin": ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1), "embed_dim": 8, "num_heads": (1, 1, 1, 1)}),
    "efficientnet": ("test_efficientnet", {}),
    "vit": ("test_vit", {}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_backbone_maps_follow_feature_info(family: str) -> None:
    name, kwargs = FAMILIES[family]
    backbone = TimmBackbone(name, **kwargs)
    assert backbone.reductions == [4, 8, 16, 32]
    info = list(backbone.model.feature_info)
    if not backbone.single_scale:
        by_stride = {int(f["reduction"]): int(f["num_chs"]) for f in info}  # last map of each stride wins
        assert backbone.channels == [by_stride[r] for r in backbone.reductions]
    else:
        assert backbone.channels == [int(info[0]["num_chs"])] * 4
    for h, w in [(64, 96), (96, 160)]:  # non-square; 96×160 is no multiple of Swin's 7×7 window at any stage
        features = backbone(torch.randn(2, 3, h, w))
        assert [tuple(f.shape) for f in features] == [
            (2, c, h // r, w // r) for c, r in zip(backbone.channels, backbone.reductions)
        ]


def test_backbone_keys_are_timm_keys_and_pruned_keys_are_the_head() -> None:
    backbone = TimmBackbone("test_convnext")
    full = timm.create_model("test_convnext")
    keys = set(backbone.state_dict())
    assert all(k.startswith("model.") for k in keys)
    assert {k[len("model.") :] for k in keys} | backbone.pruned_keys() == set(full.state_dict())
    assert {"head.fc.weight", "head.norm.weight"} <= backbone.pruned_keys()
    assert backbone.first_conv_keys == ["stem.0.weight"]


def test_backbone_in_chans_and_subset_of_strides() -> None:
    backbone = TimmBackbone("test_resnet", in_chans=1, reductions=(8, 32))
    features = backbone(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in features] == [8, 2]
    with pytest.raises(ValueError, match=r"no feature map at stride\(s\) \[64\]"):
        TimmBackbone("test_resnet", reductions=(4, 64))


def test_unknown_backbone_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"resnet18"):
        TimmBackbone("resnet18x")


def test_an_option_the_timm_model_does_not_take_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"timm model 'resnet18' does not accept the options \['bogus'\]"):
        predec.create_model("fpn", encoder="resnet18", encoder_kwargs={"bogus": 1}, task="segmentation", num_classes=3)

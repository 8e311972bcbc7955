"""Optimiser parameter groups, LARS and the per-iteration learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from predec.config import OptimConfig, ScheduleConfig
from predec.models.encoders import TimmBackbone
from predec.optim import LARS, build_optimizer, build_scheduler, lr_multiplier, param_groups, scaled_lr


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.decoder = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.decoder.pos_embed = nn.Parameter(torch.zeros(1, 4, 2, 2))
        self.head = nn.Conv2d(4, 2, 1)


def _names(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {ids[id(p)] for p in g["params"]} for g in groups}


def test_param_groups_decay_and_lr_mults():
    model = Toy()
    groups = param_groups(model, lr=1.0, weight_decay=0.1, lr_mults={"encoder": 0.1, "decoder": 1.0, "head": 10.0})
    names = _names(model, groups)
    assert names["encoder/decay"] == {"encoder.0.weight"}
    assert names["encoder/no_decay"] == {"encoder.0.bias", "encoder.1.weight", "encoder.1.bias"}
    assert names["decoder/no_decay"] == {"decoder.0.bias", "decoder.1.weight", "decoder.1.bias", "decoder.pos_embed"}
    assert names["head/decay"] == {"head.weight"}
    by_name = {g["name"]: g for g in groups}
    assert by_name["encoder/decay"]["lr"] == pytest.approx(0.1)
    assert by_name["head/no_decay"]["lr"] == pytest.approx(10.0)
    assert by_name["encoder/no_decay"]["weight_decay"] == 0.0
    assert by_name["decoder/decay"]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_param_groups_skip_frozen_and_timm_no_weight_decay():
    backbone = TimmBackbone("test_vit")
    groups = [g for g in param_groups(backbone, 1.0, 0.1) if g["weight_decay"] == 0]
    names = set().union(*_names(backbone, groups).values())
    assert "model.pos_embed" in names and "model.cls_token" in names
    model = Toy()
    model.encoder.requires_grad_(False)
    assert all(not g["name"].startswith("encoder") for g in param_groups(model, 1.0, 0.1, {"encoder": 1.0}))


def test_build_optimizer_kinds_and_linear_scaling():
    model = Toy()
    adamw = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, encoder_lr_mult=0.5))
    assert isinstance(adamw, torch.optim.AdamW)
    enc = next(g for g in adamw.param_groups if g["name"] == "encoder/decay")
    assert enc["lr"] == pytest.approx(5e-4)
    sgd = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, lr_scaling="linear"), global_batch_size=512)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == pytest.approx(0.2)
    assert isinstance(build_optimizer(model, OptimConfig(name="lars", lr=1.0)), LARS)
    with pytest.raises(ValueError, match="global batch size"):
        build_optimizer(model, OptimConfig(lr_scaling="linear"))
    assert scaled_lr(1.0, 512) == 2.0


def test_lars_one_dim_params_no_decay_no_trust_ratio():
    weight = nn.Parameter(torch.full((2, 2), 2.0))  # norm 4
    bias = nn.Parameter(torch.full((2,), 1.0))
    opt = LARS([weight, bias], lr=1.0, weight_decay=0.5, momentum=0.9, eta=0.001)
    weight.grad = torch.full((2, 2), 1.0)
    bias.grad = torch.full((2,), 3.0)
    opt.step()
    # weight: g + wd·p = 2 everywhere (norm 4); trust = 0.001·4/4 → update 0.002
    assert torch.allclose(weight, torch.full((2, 2), 2.0 - 0.002))
    # bias: plain momentum SGD, no decay, no trust ratio
    assert torch.allclose(bias, torch.full((2,), 1.0 - 3.0))
    bias.grad = torch.full((2,), 1.0)
    opt.step()
    assert torch.allclose(bias, torch.full((2,), -2.0 - (0.9 * 3.0 + 1.0)))


def test_warmup_then_poly_cosine_step():
    poly = ScheduleConfig(name="poly", warmup_steps=10, warmup_ratio=0.1, power=1.0)
    assert lr_multiplier(0, poly, 110, 1.0) == pytest.approx(0.1)
    assert lr_multiplier(5, poly, 110, 1.0) == pytest.approx(0.55)
    assert lr_multiplier(10, poly, 110, 1.0) == pytest.approx(1.0)
    assert lr_multiplier(60, poly, 110, 1.0) == pytest.approx(0.5)
    assert lr_multiplier(110, poly, 110, 1.0) == pytest.approx(0.0)
    cosine = ScheduleConfig(name="cosine", warmup_steps=0, min_lr=1e-6)
    assert lr_multiplier(0, cosine, 100, 1e-3) == pytest.approx(1.0)
    assert lr_multiplier(50, cosine, 100, 1e-3) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert lr_multiplier(100, cosine, 100, 1e-3) == pytest.approx(1e-3)
    step = ScheduleConfig(name="step", milestones=[20, 27], gamma=0.1)
    assert [lr_multiplier(s, step, 30, 1.0) for s in (19, 20, 26, 27)] == pytest.approx([1, 0.1, 0.1, 0.01])
    sq = ScheduleConfig(name="poly", power=2.0)
    assert lr_multiplier(50, sq, 100, 1.0) == pytest.approx(0.25)


def test_scheduler_steps_every_group_and_checks_milestones():
    model = Toy()
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, head_lr_mult=10.0))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", min_lr=0.0), total_steps=4)
    for _ in range(2):
        opt.step()
        sched.step()
    head = next(g for g in opt.param_groups if g["name"] == "head/decay")
    enc = next(g for g in opt.param_groups if g["name"] == "encoder/decay")
    assert head["lr"] == pytest.approx(1.0 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert head["lr"] / enc["lr"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="milestones"):
        build_scheduler(opt, ScheduleConfig(name="step", milestones=[50]), total_steps=10)
    with pytest.raises(ValueError, match=r"warmup_steps=20 must be below the run's 20 steps.*warmup_steps=2\."):
        build_scheduler(opt, ScheduleConfig(name="poly", warmup_steps=20), total_steps=20)

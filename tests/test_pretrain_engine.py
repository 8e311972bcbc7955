"""The pre-training engine: `predec pretrain` on the synthetic recipes (tiny stand-ins) runs, lowers its loss and
initialises downstream models with the teacher's weights; EMA order and quirk flags; resume; NaN stop; bad input."""

from __future__ import annotations

import copy
import json
import math

import lightning as L
import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import predec
from predec.cli import main
from predec.config import ConfigError, TrainerConfig, list_recipes, load_config
from predec.data.io import write_image
from predec.engine import NonFiniteLossError
from predec.engine.checkpoint import read_checkpoint
from predec.engine.trainer import effective_trainer_config
from predec.pretrain.config import PretrainConfig, check_pretrain_config
from predec.pretrain.decon import DeConModule
from predec.pretrain.ema import momentum_at
from predec.pretrain.networks import attach_levels
from predec.pretrain.runs import run_pretraining

TINY = [
    "model.encoder=test_resnet",
    "ssl.num_prototypes=16",
    "ssl.hidden_dim=64",
    "ssl.out_dim=32",
    "data.num_train=16",
    "data.image_size=[48, 48]",
    "data.view_size=32",
    "data.crop_scale=[0.3, 1.0]",
    "data.batch_size=8",
    "schedule.warmup_steps=2",
    "trainer.precision=32-true",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=5",
]
STEPS = 8
# End-to-end runs: 64-px views (32-px views give 1×1 C5/P5 maps, where the contrastive term jumps between its
# empty-batch zero and a positive value) and a fixed teacher (momentum 1): with a moving EMA teacher the SlotCon
# loss is not monotone over a few steps (its sharpened targets change), a fixed teacher gives a stationary
# objective, so a lower loss shows that the optimisation works. EMA updates are tested on their own below.
E2E = ["data.view_size=64", "data.image_size=[64, 64]", "data.num_train=8", "ssl.teacher_momentum=1.0"]

# recipe, extra overrides, downstream create_model arguments
CASES = {
    "slotcon": ("pretrain/synth_slotcon", [], dict(arch="fpn", decoder_kwargs={})),
    "decon-sl-fcn": (
        "pretrain/synth_decon_sl",
        ["model.arch=fcn", "model.decoder_kwargs={channels: 32}"],
        dict(arch="fcn", decoder_kwargs={"channels": 32}),
    ),
    "decon-ml-fpn": (
        "pretrain/synth_decon_ml",
        ["model.decoder_kwargs={channels: 32, skip_dropout: 0.5}"],
        dict(arch="fpn", decoder_kwargs={"channels": 32}),
    ),
    "decon-xnet": ("pretrain/synth_decon_xnet", ["model.decoder=test_convnext"], dict(arch="xnet")),
}


def tiny_config(recipe: str, *extra: str, steps: int = STEPS) -> PretrainConfig:
    return load_config(recipe, [*TINY, f"trainer.max_steps={steps}", *extra], schema=PretrainConfig)


def _paired_losses(config: PretrainConfig, trained_state: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Mean loss of the initial and of the trained student against the run's final teacher and centers, on the
    same two batches with the same dropout: the training loss of a few steps is dominated by batch-to-batch
    noise, a paired evaluation is not."""
    from torch.utils.data import default_collate

    from predec.pretrain.data import ssl_dataset

    L.seed_everything(config.seed, verbose=False)  # as run_pretraining before building the module
    initial = DeConModule(config)
    trained = copy.deepcopy(initial)
    trained.load_state_dict(trained_state)
    targets = {k: v for k, v in trained_state.items() if k.startswith("teacher.") or ".teacher_" in k or "center" in k}
    initial.load_state_dict(targets, strict=False)  # both students against the same teacher and centers
    dataset = ssl_dataset(config.data)
    totals = [0.0, 0.0]
    for seed in (1, 2):
        torch.manual_seed(seed)
        batch = default_collate([dataset[i] for i in range(config.data.batch_size)])
        for index, module in enumerate((initial, trained)):
            with torch.no_grad(), torch.random.fork_rng():
                torch.manual_seed(seed)
                totals[index] += float(copy.deepcopy(module).ssl_loss(batch)[1]["loss"]) / 2
    return totals[0], totals[1]


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _assert_equal_states(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key, value in actual.items():
        assert torch.equal(value, expected[key]), f"{what}: {key} differs"


# ------------------------------------------------------------------------------------------------------ recipes
def test_recipes_parse_and_carry_the_papers_settings():
    names = {name for name in list_recipes() if name.startswith("pretrain/")}
    assert {
        "pretrain/slotcon_coco_r50_800ep",
        "pretrain/slotcon_imagenet_r50_200ep",
        "pretrain/decon_sl_coco_r50_fpn_800ep",
        "pretrain/decon_ml_coco_r50_fpn_800ep",
        "pretrain/decon_ml_coco_convnext_fpn",
        "pretrain/synth_slotcon",
        "pretrain/synth_decon_sl",
        "pretrain/synth_decon_ml",
        "pretrain/synth_decon_xnet",
        "pretrain/synth_supervised",
    } <= names
    for name in names:
        config = load_config(name, schema=PretrainConfig)
        check_pretrain_config(config)
        assert config.name == name.removeprefix("pretrain/")
    coco = load_config("pretrain/slotcon_coco_r50_800ep", schema=PretrainConfig)
    assert (coco.ssl.num_prototypes, coco.ssl.hidden_dim, coco.ssl.out_dim, coco.ssl.teacher_momentum) == (
        256, 4096, 256, 0.99,
    )  # fmt: skip
    assert (coco.optim.name, coco.optim.lr, coco.optim.lr_scaling, coco.optim.weight_decay) == (
        "lars", 1.0, "linear", 1e-5,
    )  # fmt: skip
    assert coco.data.batch_size * coco.trainer.devices == 512 and coco.trainer.max_steps == 231 * 800
    assert (coco.schedule.warmup_steps, coco.schedule.warmup_ratio, coco.schedule.min_lr) == (5 * 231, 0.01, 1e-6)
    imagenet = load_config("pretrain/slotcon_imagenet_r50_200ep", schema=PretrainConfig)
    assert imagenet.ssl.num_prototypes == 2048 and imagenet.trainer.max_steps == 2502 * 200
    for level in ("sl", "ml"):
        decon = load_config(f"pretrain/decon_{level}_coco_r50_fpn_800ep", schema=PretrainConfig)
        assert decon.method == f"decon-{level}" and decon.model.arch == "fpn" and decon.ssl.encoder_loss_weight == 0.5
        assert not decon.ssl.quirk_shared_momentum_counter and not decon.ssl.quirk_frozen_decoder_prototypes
    ml = load_config("pretrain/decon_ml_coco_r50_fpn_800ep", schema=PretrainConfig)
    assert ml.model.decoder_kwargs["skip_dropout"] == 0.5 and ml.model.decoder_kwargs["skip_dropout_mode"] == "channel"
    convnext = load_config("pretrain/decon_ml_coco_convnext_fpn", schema=PretrainConfig)
    assert (convnext.optim.name, convnext.optim.lr, convnext.optim.weight_decay) == ("adamw", 2e-4, 0.05)
    assert convnext.data.batch_size * convnext.trainer.devices == 224 and convnext.ssl.encoder_loss_weight == 0.0
    assert convnext.model.decoder_kwargs["skip_dropout"] == 0.5 and convnext.method == "decon-ml"


# ------------------------------------------------------------------------------------------- end to end (CLI)
@pytest.mark.parametrize("case", list(CASES))
def test_pretrain_lowers_loss_and_initialises_downstream_models(tmp_path, case, capsys):
    recipe, extra, downstream = CASES[case]
    run_dir = tmp_path / "run"
    extra = [*E2E, *extra]
    args = ["pretrain", "--config", recipe, "--run-dir", str(run_dir), *TINY, f"trainer.max_steps={STEPS}", *extra]
    assert main(args) == 0, capsys.readouterr().err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == STEPS and metrics["empty_contrastive_total"] >= 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = read_checkpoint(ckpt)["state_dict"]
    initial, trained = _paired_losses(tiny_config(recipe, *extra), state)
    assert trained < initial, (initial, trained)
    teacher_encoder, teacher_decoder, student_encoder = (
        _part(state, prefix) for prefix in ("teacher.encoder.", "teacher.decoder.", "student.encoder.")
    )
    assert any(not torch.equal(v, student_encoder[k]) for k, v in teacher_encoder.items())
    pretrained_decoder = bool(teacher_decoder)
    assert pretrained_decoder == (case != "slotcon")
    for source in (ckpt, run_dir / "weights.safetensors"):
        model = predec.create_model(
            downstream["arch"],
            encoder="test_resnet",
            decoder="test_convnext" if downstream["arch"] == "xnet" else None,
            task="segmentation",
            num_classes=3,
            encoder_weights=str(source),
            decoder_weights=str(source) if pretrained_decoder else None,
            **downstream.get("decoder_kwargs", {}),
        )
        _assert_equal_states(model.encoder.state_dict(), teacher_encoder, f"{case} encoder from {source.name}")
        if pretrained_decoder:
            _assert_equal_states(model.decoder.state_dict(), teacher_decoder, f"{case} decoder from {source.name}")
    student = predec.create_model(
        downstream["arch"], encoder="test_resnet", decoder="test_convnext" if downstream["arch"] == "xnet" else None,
        task="depth", encoder_weights=f"{ckpt}#student", **downstream.get("decoder_kwargs", {}),
    )  # fmt: skip
    _assert_equal_states(student.encoder.state_dict(), student_encoder, f"{case} student encoder")


# ------------------------------------------------------------------------------------------- EMA and quirks
class RecordStudent(L.Callback):
    """Keep a copy of the student after the first optimiser step; check the teacher runs in train mode."""

    def __init__(self) -> None:
        self.after_first: dict[str, torch.Tensor] | None = None
        self.teacher_modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.teacher_modes.append(pl_module.teacher.training and pl_module.teacher.decoder.skip_dropout.training)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == 1:
            self.after_first = {k: v.detach().clone() for k, v in pl_module.student.state_dict().items()}


def test_teacher_ema_runs_before_the_teacher_forward_in_train_mode(tmp_path):
    config = tiny_config(
        "pretrain/synth_decon_ml", "model.decoder_kwargs={channels: 16, skip_dropout: 0.5}", "schedule.warmup_steps=0",
        steps=2,
    )  # fmt: skip
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in DeConModule(config).teacher.state_dict().items()}
    recorder = RecordStudent()
    run_pretraining(config, tmp_path / "run", callbacks=[recorder])
    assert recorder.teacher_modes == [True, True]
    teacher = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    momentum = momentum_at(1, 2)  # the update before step 1's teacher forward (step 0's left the copy unchanged)
    for name, _ in DeConModule(config).teacher.named_parameters():
        expected = momentum * initial[name] + (1 - momentum) * recorder.after_first[name]
        torch.testing.assert_close(teacher[f"teacher.{name}"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared_counter", [False, True])
@pytest.mark.parametrize("frozen_prototypes", [False, True])
def test_quirk_flags(shared_counter, frozen_prototypes):
    config = tiny_config(
        "pretrain/synth_decon_sl",
        f"ssl.quirk_shared_momentum_counter={str(shared_counter).lower()}",
        f"ssl.quirk_frozen_decoder_prototypes={str(frozen_prototypes).lower()}",
        "model.decoder_kwargs={channels: 16}",
    )
    module = DeConModule(config)
    for head in module.head.values():  # make every student part differ from its teacher
        with torch.no_grad():
            head.grouping.prototypes.add_(1.0)
    before = {name: head.teacher_grouping.prototypes.clone() for name, head in module.head.items()}
    momenta = module.update_teachers(3, 10)
    expected = (
        (1 - 0.01 * (math.cos(math.pi * 6 / 10) + 1) / 2, 1 - 0.01 * (math.cos(math.pi * 7 / 10) + 1) / 2)
        if shared_counter
        else (momentum_at(3, 10),) * 2
    )
    assert (momenta["encoder"], momenta["decoder"]) == pytest.approx(expected)
    assert not torch.equal(module.head["encoder"].teacher_grouping.prototypes, before["encoder"])
    unchanged = torch.equal(module.head["decoder_p2"].teacher_grouping.prototypes, before["decoder_p2"])
    assert unchanged == frozen_prototypes


def test_alpha_zero_drops_encoder_heads_and_sl_freezes_unreached_fpn_outputs():
    module = DeConModule(tiny_config("pretrain/synth_decon_sl", "ssl.encoder_loss_weight=0"))
    assert list(module.head) == ["decoder_p2"]
    assert {n.split(".")[1] for n in module.frozen} == {"fpn_output3", "fpn_output4", "fpn_output5"}
    assert not any(p.requires_grad for n, p in module.student.decoder.named_parameters() if "fpn_output3" in n)
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert set(module.levels) == {"p2"}
    ml = DeConModule(tiny_config("pretrain/synth_decon_ml", "ssl.levels=[p3, p5]"))
    assert list(ml.head) == ["encoder", "decoder_p3", "decoder_p5"]


def test_per_view_backward_gives_the_joint_loss_gradients():
    from torch.utils.data import default_collate

    from predec.pretrain.data import ssl_dataset
    from predec.pretrain.slotcon import decon_loss

    config = tiny_config("pretrain/synth_decon_ml", "model.decoder_kwargs={channels: 16}", "data.view_size=64")
    torch.manual_seed(0)
    per_view = DeConModule(config)
    joint = copy.deepcopy(per_view)
    dataset = ssl_dataset(config.data)
    batch = default_collate([dataset[i] for i in range(4)])
    remaining, terms = per_view.ssl_loss(batch)  # back-propagates view 1's part itself
    remaining.backward()

    views = [batch["view1"], batch["view2"]]
    with torch.no_grad():
        teacher = [joint.teacher(view) for view in views]
    student = [joint.student(view) for view in views]
    boxes, flips = [batch["box1"], batch["box2"]], [batch["flip1"], batch["flip2"]]
    encoder_loss, _ = joint.head["encoder"]([s[0][-1] for s in student], [t[0][-1] for t in teacher], boxes, flips)
    decoder_losses = []
    for level in joint.levels:
        student_maps, teacher_maps = [s[1].levels[level] for s in student], [t[1].levels[level] for t in teacher]
        decoder_losses.append(joint.head[f"decoder_{level}"](student_maps, teacher_maps, boxes, flips)[0])
    loss = decon_loss(encoder_loss, decoder_losses, joint.alpha)
    loss.backward()
    torch.testing.assert_close(terms["loss"], loss.detach())
    grads = dict(per_view.named_parameters())
    for name, param in joint.named_parameters():
        if param.grad is None:
            assert grads[name].grad is None, name
        else:
            torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buffer in joint.named_buffers():
        if name.endswith("center"):
            torch.testing.assert_close(dict(per_view.named_buffers())[name], buffer)


DDP_PART_SCRIPT = """
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn

class Parts(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1, bias=False)

    def forward(self, x0, x1):
        self.lin(x0).sum().backward()  # a part back-propagated inside the DDP forward, as DeConModule does
        return self.lin(x1).sum()

def run(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = nn.parallel.DistributedDataParallel(Parts())
    for _ in range(2):
        model(torch.full((2, 3), rank + 1.0), torch.full((2, 3), 10.0 * (rank + 1))).backward()
        # one write per line: two ranks share the pipe, and print() writes the text and the newline separately
        sys.stdout.write(f"{rank} {model.module.lin.weight.grad.tolist()}\\n")
        sys.stdout.flush()
        model.module.lin.weight.grad = None
    dist.destroy_process_group()
    os._exit(0)  # skip C++ teardown: gloo's threads at interpreter exit abort now and then ("terminate called ...")

if __name__ == "__main__":
    mp.spawn(run, args=(int(sys.argv[1]),), nprocs=2)
"""


def test_ddp_all_reduces_a_part_back_propagated_inside_the_forward(tmp_path):
    import socket
    import subprocess
    import sys

    script = tmp_path / "parts.py"
    script.write_text(DDP_PART_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line[:1] in "01"]
    # mean over the ranks of (part 0 + part 1): ((2·1 + 2·10) + (2·2 + 2·20)) / 2 = 33 per weight, every step
    assert len(lines) == 4 and all(line.split(" ", 1)[1] == "[[33.0, 33.0, 33.0]]" for line in lines), lines


# ------------------------------------------------------------------------------------------ resume and NaN
class CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    extra = ("model.decoder_kwargs={channels: 16, skip_dropout: 0.5}", "trainer.checkpoint_every_n_steps=2")
    config = tiny_config("pretrain/synth_decon_ml", *extra, steps=4)
    reference = run_pretraining(config, tmp_path / "reference")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(config, tmp_path / "resumed", callbacks=[CrashAt(3)])
    assert json.loads((tmp_path / "resumed" / "status.json").read_text())["state"] == "failed"
    resumed = run_pretraining(config, tmp_path / "resumed")  # the interrupted directory resumes from step 2
    assert resumed.step == 4
    assert resumed.metrics["loss_first"] == pytest.approx(reference.metrics["loss_first"])
    reference_state = safetensors.torch.load_file(str(tmp_path / "reference" / "weights.safetensors"))
    resumed_state = safetensors.torch.load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    for key, value in reference_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    centers = [
        read_checkpoint(tmp_path / run / "checkpoints" / "last.ckpt")["state_dict"]["head.decoder_p2.center"]
        for run in ("reference", "resumed")
    ]
    torch.testing.assert_close(centers[0], centers[1])


class PoisonAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.head["encoder"].projector.mlp[0].weight.fill_(float("nan"))


def test_nan_loss_stops_naming_step_and_terms(tmp_path, capsys):
    config = tiny_config("pretrain/synth_slotcon", "trainer.checkpoint_every_n_steps=1", steps=4)
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(.*enc/G12=nan"):
        run_pretraining(config, tmp_path / "run", callbacks=[PoisonAt(2)])
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 2
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("recipe", "override", "message"),
    [
        ("pretrain/synth_decon_sl", "ssl.encoder_loss_weight=1.0", "gives the decoder no loss"),
        ("pretrain/synth_slotcon", "model.arch=fpn", "pre-trains the encoder only"),
        ("pretrain/synth_decon_ml", "model.arch=null", "set model.arch"),
        ("pretrain/synth_decon_sl", "ssl.levels=[p2, p3]", "one level"),
        ("pretrain/synth_supervised", "data.dataset=synth_scenes", "needs image classes"),
        ("pretrain/synth_decon_xnet", "model.decoder=null", "model.arch=xnet needs model.decoder"),
        ("pretrain/synth_slotcon", "schedule.name=plateau", r"schedule\.name=plateau: model selection .* predec train"),
        ("pretrain/synth_supervised", "trainer.monitor=auto", r"trainer\.monitor=auto: model selection"),
    ],
)
def test_contradictory_settings_are_rejected(recipe, override, message):
    with pytest.raises(ConfigError, match=message):
        check_pretrain_config(load_config(recipe, [override], schema=PretrainConfig))


def test_decoder_level_errors():
    class NoLevels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.level_channels: dict[str, int] = {}

    with pytest.raises(ValueError, match="exposes no level"):
        attach_levels(NoLevels(), "decon-sl", None)
    with pytest.raises(ValueError, match=r"\['p7'\] are not levels of the FPN decoder; its levels: \['p2'"):
        DeConModule(tiny_config("pretrain/synth_decon_ml", "ssl.levels=[p7]"))


def test_cli_reports_bad_recipe(tmp_path, capsys):
    assert (
        main(["pretrain", "--config", "pretrain/synth_slotcon", "model.arch=fpn", "output_dir=" + str(tmp_path)]) == 2
    )
    assert "pre-trains the encoder only" in capsys.readouterr().err


def test_sync_batchnorm_only_under_ddp_on_gpu():
    cpu = TrainerConfig(accelerator="cpu", devices=2, strategy="ddp", sync_batchnorm=True)
    assert effective_trainer_config(cpu).sync_batchnorm is False
    single_gpu = TrainerConfig(accelerator="gpu", devices=1, sync_batchnorm=True)
    assert effective_trainer_config(single_gpu).sync_batchnorm is False
    gpus = TrainerConfig(accelerator="gpu", devices=8, num_nodes=2, strategy="ddp", sync_batchnorm=True)
    assert effective_trainer_config(gpus).sync_batchnorm is True


# ---------------------------------------------------------------------------------------------------- supervised
def test_supervised_writes_a_timm_classifier_that_initialises_encoders_and_xnet_decoders(tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = [
        "model.encoder=test_resnet",
        "data.num_train=32",
        "data.num_val=16",
        "data.image_size=[32, 32]",
        "data.view_size=32",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "trainer.max_steps=6",
        "schedule.warmup_steps=1",
        "trainer.precision=32-true",
        "trainer.progress_bar=false",
    ]
    assert main(["pretrain", "--config", "pretrain/synth_supervised", "--run-dir", str(run_dir), *overrides]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_images"] == 16 and 0.0 <= metrics["top1"] <= 1.0 and len(metrics["classes"]) == 16
    classifier_file = run_dir / "classifier.safetensors"
    classifier = safetensors.torch.load_file(str(classifier_file))
    reference = timm.create_model("test_resnet", num_classes=16).state_dict()
    assert classifier.keys() == reference.keys()
    assert classifier["fc.weight"].shape == reference["fc.weight"].shape
    model = predec.create_model(
        "xnet", encoder="test_resnet", decoder="test_resnet", task="depth",
        encoder_weights=str(classifier_file), decoder_weights=str(classifier_file),
    )  # fmt: skip
    for module in (model.encoder.model, model.decoder.backbone.model):
        for key, value in module.state_dict().items():
            assert torch.equal(value, classifier[key]), key


def test_classification_folder_labels_follow_the_training_classes(tmp_path):
    from predec.pretrain.data import classification_classes, classification_datasets

    for split, classes in (("train", ("box", "cone", "sphere")), ("val", ("cone",))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            write_image(tmp_path / split / name / "a.png", torch.full((8, 8, 3), 100, dtype=torch.uint8).numpy())
    folder = ["data.dataset=folder", "data.reader_kwargs={}", "data.view_size=8"]
    roots = [f"data.root={tmp_path / 'train'}", f"data.val_root={tmp_path / 'val'}"]
    config = load_config("pretrain/synth_supervised", [*folder, *roots], schema=PretrainConfig)
    check_pretrain_config(config)
    assert classification_classes(config.data) == ["box", "cone", "sphere"]
    image, label = classification_datasets(config.data, train=False)[0]
    assert label == 1 and tuple(image.shape) == (3, 8, 8)
    with pytest.raises(ConfigError, match=r"data\.val_root"):
        check_pretrain_config(load_config("pretrain/synth_supervised", [*folder, "data.root=x"], schema=PretrainConfig))
    kept_label_mode = load_config("pretrain/synth_supervised", [*roots, "data.dataset=folder"], schema=PretrainConfig)
    with pytest.raises(ConfigError, match="label_mode"):
        classification_datasets(kept_label_mode.data, train=True)


class GradientProbe(L.Callback):
    """Keeps the first batch, the module as it was before its step, and the gradients the optimiser receives."""

    def __init__(self) -> None:
        self.batch = self.initial = self.grads = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.batch is None:
            self.batch = {k: v.clone() for k, v in batch.items()}
            self.initial = copy.deepcopy(module)

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in module.learnable_params if p.grad is not None}


def test_the_optimiser_receives_the_gradient_of_both_views(tmp_path):
    """The loss of view 1, back-propagated inside ``training_step`` (``backward_part``), reaches the optimiser with
    the returned loss of view 2: Lightning zeroes gradients after ``training_step``, which once dropped it (the
    accumulated case is ``tests/test_ddp_pretrain.py``'s one-process side)."""
    config = tiny_config(
        "pretrain/synth_decon_ml",
        "model.decoder_kwargs={channels: 16, skip_dropout: 0.0}",
        "data.batch_size=4",
        "schedule.warmup_steps=0",
        "schedule.warmup_ratio=0.0",
        steps=1,
    )
    probe = GradientProbe()
    run_pretraining(config, tmp_path / "run", callbacks=[probe])
    reference = probe.initial
    reference.update_teachers(0, config.trainer.max_steps)
    loss, _ = reference.ssl_loss(probe.batch)  # no trainer here: view 1's part is back-propagated at once, unscaled
    loss.backward()
    expected = {n: p.grad for n, p in reference.learnable_params if p.grad is not None}
    assert expected.keys() == probe.grads.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(probe.grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_snapshots_keep_the_weights_of_every_nth_step_and_load_as_weights(tmp_path):
    """trainer.snapshot_every_n_steps keeps snapshots/step<N>.ckpt (weights only) after the run; each loads as the
    encoder and decoder weights of a dense model (the teacher part), and the last one equals the run's final
    weights."""
    config = tiny_config("pretrain/synth_decon_ml", "trainer.snapshot_every_n_steps=4", steps=8)
    result = run_pretraining(config, tmp_path / "run")
    snapshots = sorted((tmp_path / "run" / "snapshots").glob("step*.ckpt"))
    assert [p.name for p in snapshots] == ["step00000004.ckpt", "step00000008.ckpt"]
    first, last = (read_checkpoint(p) for p in snapshots)
    assert first["global_step"] == 4 and "optimizer_states" not in first
    final = safetensors.torch.load_file(result.metrics["weights"])
    for key, value in final.items():
        assert torch.equal(last["state_dict"][key], value), key
    assert any(not torch.equal(first["state_dict"][k], v) for k, v in final.items() if k.startswith("teacher."))
    model = predec.create_model(
        "fpn",
        encoder="test_resnet",
        task="segmentation",
        num_classes=3,
        encoder_weights=str(snapshots[0]),
        decoder_weights=str(snapshots[0]),
        **dict(config.model.decoder_kwargs, skip_dropout=0.0),
    )
    teacher = _part(first["state_dict"], "teacher.encoder.")
    assert teacher and teacher.keys() <= model.encoder.state_dict().keys()
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in teacher.items())

"""Model selection on a validation split: the best step of a validation history, early stopping, the best weights
becoming the run's model, the final evaluation on a separate test split, and the validation curve across a resume."""

from __future__ import annotations

import json

import pytest
import torch

from predec.config import ConfigError, DenseConfig, load_config
from predec.engine.checkpoint import read_checkpoint
from predec.engine.dense import DenseModule, monitored_metric
from predec.engine.dense_runs import BEST_CHECKPOINT, best_step, select_best_weights, train_dense
from predec.engine.run_dir import RunDir


def tiny(tmp_path, *extra: str) -> DenseConfig:
    """A seconds-long segmentation run on 32×32 scenes with validation every 4 steps and a test split."""
    overrides = [
        "model.encoder=test_resnet",
        "data.num_train=8",
        "data.num_val=4",
        "data.test_split=test",
        "data.num_test=6",
        "data.image_size=[32, 32]",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "trainer.max_steps=16",
        "trainer.val_every_n_steps=4",
        "trainer.monitor=auto",
        "trainer.checkpoint_every_n_steps=4",
        "trainer.progress_bar=false",
        "trainer.precision=32-true",
        "schedule.warmup_steps=2",
        f"output_dir={tmp_path}",
        *extra,
    ]
    return load_config("dense/synth_seg_fpn", overrides)


def test_best_step_max_min_and_ties_keep_the_earliest():
    history = {4: {"val/mIoU": 0.2}, 8: {"val/mIoU": 0.5}, 12: {"val/mIoU": 0.5}, 16: {"val/mIoU": 0.4}}
    assert best_step(history, "val/mIoU", "max") == 8
    assert best_step(history, "val/mIoU", "min") == 4
    depth = {5: {"val/abs_rel": 0.3}, 10: {"val/abs_rel": 0.1}, 15: {"val/abs_rel": 0.1}, 20: {"val/abs_rel": 0.2}}
    assert best_step(depth, "val/abs_rel", "min") == 10
    with pytest.raises(ValueError, match="val/d1"):
        best_step(depth, "val/d1", "max")


def test_monitor_resolution_and_errors(tmp_path):
    assert monitored_metric(tiny(tmp_path)) == ("val/mIoU", "max")
    depth = tiny(tmp_path, "model.task=depth", "model.num_classes=null", "trainer.monitor=val/d1")
    assert monitored_metric(depth) == ("val/d1", "max")
    depth.trainer.monitor = "auto"
    assert monitored_metric(depth) == ("val/abs_rel", "min")
    with pytest.raises(ConfigError, match="val/mIoU"):
        monitored_metric(tiny(tmp_path, "trainer.monitor=val/miou"))
    with pytest.raises(ConfigError, match="val_every_n_steps"):
        monitored_metric(tiny(tmp_path, "trainer.val_every_n_steps=null"))
    with pytest.raises(ConfigError, match=r"needs trainer\.monitor"):
        monitored_metric(tiny(tmp_path, "trainer.monitor=null", "trainer.patience=3"))


def test_early_stopping_keeps_the_best_and_tests_it(tmp_path):
    """With min_delta 1 no validation counts as an improvement: training stops `patience` validations after the
    first, the best of those validations is selected, and the test split is what metrics.json reports."""
    config = tiny(tmp_path, "trainer.min_delta=1.0", "trainer.patience=2", "trainer.max_steps=40")
    result = train_dense(config)
    record = json.loads(result.run_dir.metrics_path.read_text())
    history = {int(k): v for k, v in record["val_history"].items()}
    assert result.step == 12 and sorted(history) == [4, 8, 12]
    chosen = best_step(history, "val/mIoU", "max")
    assert record["selection"] == {
        "monitor": "val/mIoU",
        "mode": "max",
        "step": chosen,
        "score": history[chosen]["val/mIoU"],
        "last_step": 12,
        "early_stopped": True,
    }
    assert record["split"] == "test" and record["val_metrics"]["mIoU"] == record["selection"]["score"]
    assert record["metrics"]["mIoU"] != record["val_metrics"]["mIoU"]  # another set of scenes


def test_the_best_weights_become_the_model(tmp_path):
    """The selected step's weights are the saved model's, bit for bit, and best.ckpt holds that step."""
    import predec

    result = train_dense(tiny(tmp_path, "optim.lr=3e-3"))
    record = json.loads(result.run_dir.metrics_path.read_text())
    history = {int(k): v for k, v in record["val_history"].items()}
    chosen = best_step(history, "val/mIoU", "max")
    assert record["selection"]["step"] == chosen
    model = predec.from_pretrained(result.run_dir.model_dir).state_dict()
    if chosen == result.step:
        last = read_checkpoint(result.run_dir.last_checkpoint)["state_dict"]
        expected = {k.removeprefix("model."): v for k, v in last.items()}
    else:
        best = read_checkpoint(result.run_dir.checkpoints / BEST_CHECKPOINT)
        assert best["global_step"] == chosen
        expected = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
    assert all(torch.equal(model[k], expected[k]) for k in model)


def test_select_best_weights_loads_the_best_checkpoint(tmp_path):
    """A best validation before the last step: the module gets best.ckpt's weights; a best.ckpt of another step than
    the history's best is refused."""
    config = tiny(tmp_path)
    module = DenseModule(config, build_weights=False)
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    best_state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in module.state_dict().items()}
    torch.save({"global_step": 8, "state_dict": best_state}, run.checkpoints / BEST_CHECKPOINT)
    module.val_history = {4: {"val/mIoU": 0.1}, 8: {"val/mIoU": 0.3}, 12: {"val/mIoU": 0.2}}

    class Trainer:
        global_step, max_steps = 12, 12

    selection = select_best_weights(Trainer(), module, run, "val/mIoU", "max")
    assert selection == {
        "monitor": "val/mIoU",
        "mode": "max",
        "step": 8,
        "score": 0.3,
        "last_step": 12,
        "early_stopped": False,
    }
    assert all(torch.equal(module.state_dict()[k], v) for k, v in best_state.items())
    module.val_history[12] = {"val/mIoU": 0.25}
    module.val_history[4] = {"val/mIoU": 0.9}
    with pytest.raises(ValueError, match="holds the weights of step 8"):
        select_best_weights(Trainer(), module, run, "val/mIoU", "max")


def test_validation_history_survives_a_resume(tmp_path):
    """A run stopped after its first validations and resumed ends with the uninterrupted run's history and choice."""
    whole = train_dense(tiny(tmp_path, "name=whole", "optim.lr=3e-3"))
    config = tiny(tmp_path, "name=split", "optim.lr=3e-3", "trainer.max_steps=16")

    class StopError(Exception):
        pass

    import lightning as L

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 10:
                raise StopError

    with pytest.raises(StopError):
        train_dense(config, callbacks=[StopAt()])
    resumed = train_dense(config)
    a = json.loads(whole.run_dir.metrics_path.read_text())
    b = json.loads(resumed.run_dir.metrics_path.read_text())
    assert a["val_history"] == b["val_history"] and a["selection"] == b["selection"]
    assert a["metrics"]["mIoU"] == pytest.approx(b["metrics"]["mIoU"], abs=1e-6)


def test_plateau_decay_follows_reduce_lr_on_plateau():
    """The decay rule against torch's ReduceLROnPlateau (abs threshold, no cool-down) on one sequence of values."""
    from predec.engine.plateau import PlateauDecay

    values = [0.30, 0.40, 0.40, 0.41, 0.405, 0.41, 0.409, 0.50, 0.49, 0.49, 0.49, 0.49, 0.49, 0.49]
    decay = PlateauDecay("val/mIoU", "max", patience=2, gamma=0.1, min_delta=0.01)
    parameter = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(
        torch.optim.SGD([parameter], lr=1.0), mode="max", factor=0.1, patience=1, threshold=0.01, threshold_mode="abs"
    )
    ours, theirs = [], []
    lr = 1.0
    for step, value in enumerate(values, start=1):
        if decay.observe(value, step):
            lr *= 0.1
        ours.append(lr)
        reference.step(value)
        theirs.append(reference.optimizer.param_groups[0]["lr"])
    # torch counts an epoch as bad once patience is exceeded (patience=1 ↔ 2 bad validations in a row)
    assert ours == pytest.approx(theirs) and decay.decays == [4, 6, 10, 12, 14]
    restored = PlateauDecay("val/mIoU", "max", patience=2, gamma=0.1)
    restored.load_state_dict(decay.state_dict())
    assert restored.state_dict() == decay.state_dict()
    with pytest.raises(ValueError, match=r"schedule\.gamma=1\.5"):
        PlateauDecay("val/mIoU", "max", patience=2, gamma=1.5)


def test_plateau_schedule_lowers_the_lr_and_stops(tmp_path):
    """schedule.name=plateau with min_delta 1 (no validation improves): the lr is multiplied by gamma after every
    plateau_patience validations (the logged lr shows it), early stopping ends the run, metrics.json lists the
    decays; without a monitor the schedule is refused."""
    import csv

    config = tiny(
        tmp_path,
        "schedule.name=plateau",
        "schedule.plateau_patience=2",
        "schedule.gamma=0.5",
        "trainer.min_delta=1.0",
        "trainer.patience=5",
        "trainer.max_steps=40",
        "optim.lr=1e-3",
        "trainer.log_every_n_steps=1",
    )
    result = train_dense(config)
    record = json.loads(result.run_dir.metrics_path.read_text())
    assert record["selection"]["lr_decays"] == [12, 20] and result.step == 24
    with open(result.run_dir.logs / "csv" / "metrics.csv") as handle:
        lrs = {
            int(r["step"]): float(r["lr-AdamW/head/decay"])
            for r in csv.DictReader(handle)
            if r.get("lr-AdamW/head/decay")
        }
    assert lrs[10] == pytest.approx(1e-3) and lrs[14] == pytest.approx(5e-4) and lrs[22] == pytest.approx(2.5e-4)
    with pytest.raises(ConfigError, match=r"schedule\.name=plateau needs trainer\.monitor"):
        monitored_metric(tiny(tmp_path, "schedule.name=plateau", "trainer.monitor=null"))

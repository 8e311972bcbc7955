"""``schedule.name: plateau``: lower the learning rate when the monitored validation metric stops improving.

PyTorch's ``ReduceLROnPlateau`` rule (``mode``, ``factor`` = ``schedule.gamma``, ``patience`` =
``schedule.plateau_patience``, an absolute ``threshold`` = ``trainer.min_delta``, no cool-down) as a Lightning callback
on top of the step scheduler (warm-up, then constant): a decay multiplies the scheduler's base learning rates, so the
warm-up and every parameter group's ratio are kept, and both the callback's counters and the base rates are saved in
checkpoints — a resumed run decays where the uninterrupted one would. A callback rather than Lightning's
``reduce_on_plateau`` scheduler config because Lightning steps those after ``on_validation_end``, when the checkpoint of
that step has already been written again (:class:`predec.engine.checkpoint.LastCheckpoint`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn


class PlateauDecay(L.Callback):
    """Multiply the learning rate by ``gamma`` after ``patience`` validations without improvement of ``monitor``.

    Args:
        monitor: the logged validation metric (``val/mIoU``).
        mode: ``max`` or ``min``: which direction is an improvement.
        patience: validations in a row without improvement before a decay.
        gamma: decay factor in (0, 1).
        min_delta: an improvement must exceed the best value so far by more than this (absolute).
        min_lr: no decay takes the largest base learning rate below this.

    Attributes:
        best: the best value so far (None before the first validation).
        bad: validations since the last improvement (reset by a decay).
        decays: the optimiser steps at which the learning rate was lowered.
    """

    def __init__(
        self, monitor: str, mode: str, patience: int, gamma: float, min_delta: float = 0.0, min_lr: float = 0.0
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: expected 'max' or 'min'.")
        if patience < 1:
            raise ValueError(f"schedule.plateau_patience={patience}: give a number of validations >= 1.")
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"schedule.gamma={gamma}: a plateau decay factor lies in (0, 1), e.g. 0.1.")
        self.monitor, self.mode, self.patience, self.gamma = monitor, mode, patience, gamma
        self.min_delta, self.min_lr = min_delta, min_lr
        self.best: float | None = None
        self.bad = 0
        self.decays: list[int] = []

    @property
    def state_key(self) -> str:
        return f"PlateauDecay[{self.monitor}]"

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def observe(self, value: float, step: int) -> bool:
        """Account one validation; True if the learning rate must be lowered now (the caller applies it)."""
        if self.improved(value):
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        if self.bad < self.patience:
            return False
        self.bad = 0
        self.decays.append(step)
        return True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"schedule.name=plateau watches {self.monitor!r}, which the validation did not log; logged: "
                f"{sorted(trainer.callback_metrics)}."
            )
        if not self.observe(float(value), trainer.global_step):
            return
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if max(scheduler.base_lrs) * self.gamma < self.min_lr:
                self.decays.pop()
                return
            scheduler.base_lrs = [lr * self.gamma for lr in scheduler.base_lrs]
            for group in scheduler.optimizer.param_groups:
                group["lr"] *= self.gamma

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "decays": list(self.decays)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.bad, self.decays = state_dict["best"], state_dict["bad"], list(state_dict["decays"])


__all__ = ["PlateauDecay"]

"""The generic self-supervised LightningModule (:class:`SSLMethod`, in the style of solo-learn) and the loss
statistics a run reports (:class:`LossTracker`).

A method declares its :attr:`~SSLMethod.momentum_pairs` (which modules are EMA copies of which, and on which side of
the network) and implements :meth:`~SSLMethod.ssl_loss`; the loop (teacher EMA before the teacher forward with the
cosine momentum schedule, NaN stop naming the step and the terms, logging) stays generic. The learnable parameters
are those with ``requires_grad``; teachers never have it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from predec.engine.guards import check_finite_loss
from predec.engine.trainer import step_optimizers
from predec.pretrain.config import PretrainConfig
from predec.pretrain.ema import decon_momenta, update_momentum
from predec.pretrain.networks import MomentumPair

STATS_KEY = "predec_pretrain_stats"


def loss_window(max_steps: int) -> int:
    """Steps averaged for the first/last loss of a run: a quarter of the run, between 1 and 10."""
    return max(1, min(10, max_steps // 4))


class LossTracker:
    """Mean training loss of the first and of the latest ``window`` steps, kept across a resume (bounded memory).

    Args:
        window: steps per window.
    """

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        """Record the loss of one training step."""
        if len(self.first) < self.window:
            self.first.append(value)
        self.recent.append(value)

    def summary(self) -> dict[str, Any]:
        """``{"loss_first", "loss_last", "loss_window"}`` (None before any step)."""
        return {
            "loss_first": sum(self.first) / len(self.first) if self.first else None,
            "loss_last": sum(self.recent) / len(self.recent) if self.recent else None,
            "loss_window": self.window,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint (``torch.load(weights_only=True)``-safe)."""
        return {"first_losses": list(self.first), "recent_losses": list(self.recent)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.first = [float(v) for v in state.get("first_losses", [])][: self.window]
        self.recent.clear()
        self.recent.extend(float(v) for v in state.get("recent_losses", []))


class SSLMethod(L.LightningModule):
    """A self-supervised method with EMA teachers, as solo-learn's ``BaseMomentumMethod``.

    Subclasses set ``self.config`` and build their modules, then implement :attr:`momentum_pairs` (declarative:
    which modules are EMA copies of which) and :meth:`ssl_loss`. The loop does, per optimiser step: teacher EMA
    update (momentum of :func:`predec.pretrain.ema.decon_momenta` at the step, before the teacher forward), loss,
    NaN/Inf stop naming the step and every term, logging (``train/loss`` and the terms). The optimiser receives
    the ``requires_grad`` parameters (:attr:`learnable_params`); teachers are ``requires_grad=False``.

    A method may back-propagate independent parts of its loss inside :meth:`ssl_loss` with
    :meth:`backward_part` (freeing their graphs early) and return the rest for Lightning's backward.
    """

    config: PretrainConfig

    def __init__(self) -> None:
        super().__init__()
        self._ema_step = -1
        self.empty_contrastive_total = 0
        self.losses = LossTracker()  # subclasses size it with loss_window(max_steps)

    # ------------------------------------------------------------------------------------------ declarations
    @property
    def momentum_pairs(self) -> list[MomentumPair]:
        """(student, teacher, side) triples updated by EMA before every step; ``side`` picks the momentum."""
        raise NotImplementedError

    def ssl_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The loss of a batch still to back-propagate, and the named terms (detached scalars, logged and named in
        a NaN error), among them ``loss``: the value of the whole loss, parts already back-propagated included."""
        raise NotImplementedError

    def backward_part(self, loss: Tensor, step: int, terms: Mapping[str, Tensor | float]) -> None:
        """Back-propagate ``loss``, an independent part of this step's loss, now (its graph is freed at once).

        Under DDP this runs inside the wrapped forward, where the gradient reducer ignores gradient hooks (as for
        the non-final batches of gradient accumulation): the gradients accumulate locally and are all-reduced
        with those of the loss Lightning back-propagates after the forward. A non-finite part stops the run
        before its backward. With ``16-mixed`` precision the part is scaled by the gradient scaler as Lightning
        scales the rest.
        """
        trainer = self._trainer
        check_finite_loss(loss, step, terms, trainer=trainer)
        if trainer is not None:  # Lightning divides the loss it back-propagates by the accumulated batches; so here
            loss = loss / trainer.accumulate_grad_batches
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None) if trainer is not None else None
        (scaler.scale(loss) if scaler is not None else loss).backward()

    @property
    def learnable_params(self) -> list[tuple[str, nn.Parameter]]:
        """The (name, parameter) pairs the optimiser trains: every parameter with ``requires_grad``."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def check_teachers_frozen(self) -> None:
        """Raise if a teacher parameter is learnable (it must change by EMA only)."""
        learnable = {id(p) for _, p in self.learnable_params}
        for pair in self.momentum_pairs:
            bad = [n for n, p in pair.teacher.named_parameters() if id(p) in learnable]
            if bad:
                raise RuntimeError(f"Teacher parameters {bad[:5]} require gradients; teachers are updated by EMA only.")

    # ------------------------------------------------------------------------------------------------ EMA
    def momenta(self, step: int, total_steps: int) -> dict[str, float]:
        """Momentum per side at optimiser step ``step`` of ``total_steps``."""
        ssl = self.config.ssl
        encoder, decoder = decon_momenta(
            min(step, total_steps), total_steps, ssl.teacher_momentum, shared_counter=ssl.quirk_shared_momentum_counter
        )
        return {"encoder": encoder, "decoder": decoder}

    @torch.no_grad()
    def update_teachers(self, step: int, total_steps: int) -> dict[str, float]:
        """EMA-update every teacher of :attr:`momentum_pairs` for step ``step``; returns the momenta used."""
        momenta = self.momenta(step, total_steps)
        for pair in self.momentum_pairs:
            update_momentum(pair.student, pair.teacher, momenta[pair.side])
        return momenta

    # ------------------------------------------------------------------------------------------------ loop
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Nothing: Lightning zeroes the gradients after ``training_step`` and before its backward, which would drop
        what :meth:`backward_part` back-propagated inside it. :meth:`training_step` zeroes them itself, first."""

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        step = self.global_step
        if step != self._ema_step:  # once per optimiser step (first micro-batch under gradient accumulation)
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)
            momenta = self.update_teachers(step, self.config.trainer.max_steps)
            self._ema_step = step
            self.log("train/momentum", momenta["encoder"], batch_size=1)
        loss, terms = self.ssl_loss(batch)
        total = torch.as_tensor(terms["loss"])
        check_finite_loss(total, step, terms, trainer=self.trainer)
        self.losses.add(float(total))
        batch_size = _batch_size(batch)
        self.log("train/loss", float(total), prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": float(v) for k, v in terms.items() if k != "loss"}, batch_size=batch_size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        self.check_teachers_frozen()
        config = self.config
        return step_optimizers(self, config.optim, config.schedule, config.trainer, config.data.batch_size)

    # ------------------------------------------------------------------------------------------ statistics
    def loss_summary(self) -> dict[str, Any]:
        """:meth:`LossTracker.summary` plus the number of empty contrastive terms over the run."""
        return {**self.losses.summary(), "empty_contrastive_total": self.empty_contrastive_total}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STATS_KEY] = {**self.losses.state_dict(), "empty_contrastive_total": self.empty_contrastive_total}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stats = checkpoint.get(STATS_KEY) or {}
        self.losses.load_state_dict(stats)
        self.empty_contrastive_total = int(stats.get("empty_contrastive_total", 0))


def _batch_size(batch: Mapping[str, Any]) -> int:
    first = batch["view1"] if "view1" in batch else next(iter(batch.values()))
    return int(first.shape[0])

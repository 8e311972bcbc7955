"""Stop training on a non-finite loss or gradient, with a message naming the step, before anything is saved.

The check runs before the optimiser step, so the weights never take a NaN update and the last checkpoint on disk
(written after an earlier, finite step) stays the last good one. Under DDP every rank takes the same decision
(one all-reduced flag), so no rank waits forever for a peer that stopped.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """Raised when the loss (or a gradient) becomes NaN or Inf; the message names the step and the terms."""


def _format_terms(terms: Mapping[str, Tensor | float]) -> str:
    return ", ".join(f"{name}={float(value):.6g}" for name, value in terms.items())


def check_finite_loss(
    loss: Tensor,
    step: int,
    terms: Mapping[str, Tensor | float] | None = None,
    trainer: L.Trainer | None = None,
) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN/Inf on this process (or on any, given a trainer).

    Args:
        loss: the scalar loss of the step.
        step: optimiser step (``trainer.global_step``) the loss belongs to.
        terms: the loss terms, named in the message.
        trainer: when given, the decision is all-reduced over processes.
    """
    bad = not bool(torch.isfinite(loss.detach()).all())
    if trainer is not None and trainer.world_size > 1:
        bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
    if bad:
        detail = _format_terms(terms or {"loss": loss.detach()})
        raise NonFiniteLossError(
            f"Non-finite loss at step {step} ({detail}). Training stopped; the last checkpoint written before this "
            "step is kept. Lower the learning rate, enable optim.grad_clip_norm, or check the data of this step."
        )


class NonFiniteGradientGuard(L.Callback):
    """Raise :class:`NonFiniteLossError` when a gradient is NaN/Inf right before the optimiser step.

    Skipped under ``16-mixed`` precision, where the gradient scaler expects and handles infinite gradients.
    """

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if str(trainer.precision).startswith("16"):
            return
        grads = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        # One fused norm and one device sync per step; names are looked up only after a failure.
        total = torch.nn.utils.get_total_norm([g for _, g in grads]) if grads else torch.zeros(())
        bad = not bool(torch.isfinite(total))
        bad_names = [name for name, g in grads if not bool(torch.isfinite(g).all())] if bad else []
        if trainer.world_size > 1:
            bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        if bad:
            where = f": {name_list(bad_names)}" if bad_names else " on another process"
            raise NonFiniteLossError(
                f"Non-finite gradient at step {trainer.global_step}{where}. Training stopped before the optimiser "
                "step; the last checkpoint is kept. Lower the learning rate or enable optim.grad_clip_norm."
            )


def nonfinite_tensors(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or Inf (weights and buffers alike)."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def name_list(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, comma-separated, and how many more there are (for one-line error messages)."""
    return ", ".join(names[:shown]) + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


class FiniteWeightsGuard(L.Callback):
    """Refuse to write a checkpoint whose weights or buffers (e.g. BatchNorm running variances) hold a NaN or Inf:
    raise :class:`NonFiniteLossError` from ``on_save_checkpoint``, before anything is written, so the last checkpoint
    on disk (and the one kept before it) stays the last good one. A loss can stay finite while a huge learning rate
    already overflows the normalisation statistics; the loss and gradient checks do not see that."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad_names = nonfinite_tensors(checkpoint.get("state_dict") or {})
        bad = bool(bad_names)
        if trainer.world_size > 1:
            bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        if bad:
            where = f": {name_list(bad_names)}" if bad_names else " on another process"
            raise NonFiniteLossError(
                f"Non-finite weights at step {trainer.global_step}{where}. Training stopped without writing this "
                "step's checkpoint; the last checkpoint is kept. Lower the learning rate or enable "
                "optim.grad_clip_norm."
            )

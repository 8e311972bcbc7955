"""EMA teacher: the cosine momentum schedule of SlotCon/DeCon and the parameter update."""

from __future__ import annotations

import math

import torch
from torch import nn


def _cosine_momentum(k: int, total: int, base: float) -> float:
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total) + 1.0) / 2.0


def momentum_at(step: int, total_steps: int, base: float = 0.99) -> float:
    """Teacher momentum at iteration ``step``: ``1 − (1 − base)·(cos(π·step/total_steps) + 1)/2``.

    Goes from ``base`` at step 0 to 1 at ``total_steps``. The reference applies it before the teacher forward,
    with ``step`` the 0-based iteration index.

    Args:
        step: iteration index k, 0 <= k <= total_steps.
        total_steps: K, the number of optimisation steps of the whole run.
        base: starting momentum (0.99).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}.")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}], got {step}.")
    return _cosine_momentum(step, total_steps, base)


def decon_momenta(
    step: int, total_steps: int, base: float = 0.99, *, shared_counter: bool = False
) -> tuple[float, float]:
    """Momenta of the encoder-side and the decoder-side teacher parts at iteration ``step``.

    Encoder side: teacher encoder, encoder projector and prototypes. Decoder side: teacher decoder and the
    decoder levels' projectors (and prototypes unless quirk (b) is reproduced).

    Args:
        step: iteration index, 0 <= step < total_steps (or == total_steps).
        total_steps: K, the number of optimisation steps of the whole run.
        base: starting momentum (0.99).
        shared_counter: reproduce quirk (a) of the public DeCon code: the encoder and the decoder update each
            advance one shared counter, so the encoder uses k = 2·step and the decoder k = 2·step + 1 on the
            same K-step cosine; the momentum reaches 1 at mid-run and falls back to ``base`` at the end.
            Off (default): both use ``momentum_at(step, total_steps, base)``.

    Returns:
        (encoder momentum, decoder momentum).
    """
    momentum = momentum_at(step, total_steps, base)  # validates the arguments
    if not shared_counter:
        return momentum, momentum
    return _cosine_momentum(2 * step, total_steps, base), _cosine_momentum(2 * step + 1, total_steps, base)


@torch.no_grad()
def update_momentum(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """EMA of the parameters: ``teacher = momentum·teacher + (1 − momentum)·student``, pair by pair.

    Only parameters are averaged. Buffers (BatchNorm running statistics) are left alone: the teacher runs in
    train mode and keeps running statistics of its own batches, as in the reference SlotCon/DeCon code.

    Args:
        student: module trained by the optimiser.
        teacher: its EMA copy, same architecture (parameter names and shapes are checked).
        momentum: m in [0, 1].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
    student_params = dict(student.named_parameters())
    teacher_params = dict(teacher.named_parameters())
    if student_params.keys() != teacher_params.keys():
        only_student = sorted(student_params.keys() - teacher_params.keys())[:5]
        only_teacher = sorted(teacher_params.keys() - student_params.keys())[:5]
        raise ValueError(
            f"update_momentum: student and teacher parameters differ; only in student: {only_student}, "
            f"only in teacher: {only_teacher}. The teacher must be a copy of the student."
        )
    names = list(student_params)
    for name in names:
        if student_params[name].shape != teacher_params[name].shape:
            raise ValueError(
                f"update_momentum: parameter {name!r} has shape {tuple(student_params[name].shape)} in the student "
                f"and {tuple(teacher_params[name].shape)} in the teacher."
            )
    if not names or momentum == 1.0:
        return
    teacher_tensors = [teacher_params[name] for name in names]
    torch._foreach_mul_(teacher_tensors, momentum)
    torch._foreach_add_(teacher_tensors, [student_params[name].detach() for name in names], alpha=1.0 - momentum)

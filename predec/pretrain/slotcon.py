"""The SlotCon objective (Wen et al., 2022) as functions on tensors, and one head that applies it at one level.

DeCon uses the same objective at the encoder output and at one or several decoder levels; the pre-training
module builds one :class:`SlotConHead` per level and combines them with :func:`decon_loss`. Shapes, the exact
conventions of the reference code and the two quirk flags are documented in ``docs/decon.md``.

Notation: B images per process, K prototypes, D slot dimension, (h, w) a score map. The temperature softmaxes
and losses are computed in fp32 whatever the autocast state. Under ``torch.distributed`` the keys of the
contrastive loss are gathered from every process and the center statistics are all-reduced; a single process
needs no process group.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from predec.pretrain.heads import DenseProjector, SemanticGrouping, SlotPredictor


def _distributed(process_group: dist.ProcessGroup | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1


def align_scores(scores: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Cut each score map to the two views' overlap and undo the view's horizontal flip.

    Follows the reference exactly: ``roi_align(scores, box·(W, H, W, H), output_size=(h, w), spatial_scale=1,
    sampling_ratio=-1, aligned=True)`` then a flip of the last axis where ``flips`` is set.

    Args:
        scores: (B, K, h, w) score maps of one view.
        boxes: (B, 4) overlap box (x1, y1, x2, y2) normalised to [0, 1] in this view's own crop frame, x already
            mirrored if the view was flipped.
        flips: (B,) bool, whether the view was horizontally flipped.

    Returns:
        (B, K, h, w) fp32 maps in which pixel (i, j) of both views shows the same place of the image.
    """
    batch, _, height, width = scores.shape
    if boxes.shape != (batch, 4) or flips.shape != (batch,):
        raise ValueError(
            f"align_scores: boxes must be ({batch}, 4) and flips ({batch},) for scores {tuple(scores.shape)}; "
            f"got boxes {tuple(boxes.shape)} and flips {tuple(flips.shape)}."
        )
    with torch.autocast(scores.device.type, enabled=False):
        scores = scores.float()
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=scores.device)
        index = torch.arange(batch, dtype=torch.float32, device=scores.device).unsqueeze(1)
        rois = torch.cat([index, boxes.to(scores.device, torch.float32) * scale], dim=1)
        aligned = roi_align(scores, rois, (height, width), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flips = flips.to(device=aligned.device, dtype=torch.bool).view(batch, 1, 1, 1)
    return torch.where(flips, aligned.flip(-1), aligned)


def group_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    center: torch.Tensor,
    *,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
) -> torch.Tensor:
    """Pixel self-distillation: cross-entropy of the centred, sharpened teacher against the student, per pixel.

    ``mean over pixels of −Σ_k softmax((t_k − center_k)/teacher_temp) · log_softmax(s_k/student_temp)``.

    Args:
        student_scores: (B, K, h, w) aligned student scores of one view.
        teacher_scores: (B, K, h, w) aligned teacher scores of the other view (no gradient flows into them).
        center: (1, K) teacher center.
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature (0.07).

    Returns:
        Scalar fp32 loss, the plain mean over the B·h·w pixels.
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"group_loss: student {tuple(student_scores.shape)} and teacher {tuple(teacher_scores.shape)} "
            "score maps must have the same shape (align both views first)."
        )
    with torch.autocast(student_scores.device.type, enabled=False):
        log_student = F.log_softmax(student_scores.float() / student_temp, dim=1)
        shifted = teacher_scores.detach().float() - center.float().view(1, -1, 1, 1)
        teacher = F.softmax(shifted / teacher_temp, dim=1)
        return -(teacher * log_student).sum(dim=1).mean()


def slot_validity(scores: torch.Tensor) -> torch.Tensor:
    """Slots whose prototype is the argmax over K at one pixel at least.

    Args:
        scores: (B, K, h, w) raw (un-aligned) cosine scores of one view.

    Returns:
        (B, K) bool.
    """
    batch, num_prototypes = scores.shape[:2]
    winners = scores.detach().argmax(dim=1).view(batch, -1)
    valid = torch.zeros(batch, num_prototypes, dtype=torch.bool, device=scores.device)
    return valid.scatter_(1, winners, True)


def _gather_rows(rows: torch.Tensor, process_group: dist.ProcessGroup | None) -> tuple[torch.Tensor, int]:
    """Concatenate variable-length (n_r, D) row sets of all processes in rank order (no gradient).

    Returns:
        The (Σ n_r, D) rows and the number of rows of the lower-ranked processes (this process' offset).
    """
    if not _distributed(process_group):
        return rows, 0
    world = dist.get_world_size(process_group)
    rank = dist.get_rank(process_group)
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=process_group)
    sizes = [int(c.item()) for c in counts]
    offset = sum(sizes[:rank])
    if max(sizes) == 0:
        return rows, offset
    padded = rows.new_zeros(max(sizes), rows.shape[1])
    padded[: rows.shape[0]] = rows
    chunks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded.contiguous(), group=process_group)
    return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes)]), offset


def contrastive_loss(
    query_slots: torch.Tensor,
    key_slots: torch.Tensor,
    query_valid: torch.Tensor,
    key_valid: torch.Tensor,
    *,
    predictor: nn.Module | None = None,
    temperature: float = 0.2,
    process_group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Slot InfoNCE between the student slots of one view and the teacher slots of the other view.

    Queries are the student slots valid in the student's own view and in the teacher's other view, passed
    through ``predictor`` (BatchNorm statistics over the selected rows, as the reference) and L2-normalised.
    Keys are the L2-normalised teacher slots valid in their view, gathered from all processes (negatives).
    The positive of query (b, k) is key (b, k); its label is its rank among this process' valid keys
    (image-major over (B, K)) plus the number of valid keys of the lower-ranked processes.
    Loss = cross-entropy(q·kᵀ / temperature) × 2·temperature, mean over this process' queries.

    With fewer than two queries (no slot survives the filter; BatchNorm needs two rows) the term is a zero
    that keeps the graph connected to every parameter (so DDP sees them all), and ``stats["empty"]`` is 1;
    the reference returns NaN there.

    Args:
        query_slots: (B, K, D) student slots of one view.
        key_slots: (B, K, D) teacher slots of the other view (detached).
        query_valid: (B, K) bool, :func:`slot_validity` of the student scores of the query view.
        key_valid: (B, K) bool, :func:`slot_validity` of the teacher scores of the key view.
        predictor: module mapping (N, D) -> (N, D) applied to the selected queries, or None.
        temperature: InfoNCE temperature τ (0.2).
        process_group: group to gather keys over; None = the default group when distributed is initialised.

    Returns:
        Scalar fp32 loss and stats ``{"queries": local queries, "keys": global keys, "empty": 0 or 1}``.
    """
    shapes = [tuple(t.shape) for t in (query_slots, key_slots, query_valid, key_valid)]
    if query_slots.dim() != 3 or shapes[1] != shapes[0] or shapes[2] != shapes[0][:2] or shapes[3] != shapes[0][:2]:
        raise ValueError(
            "contrastive_loss: slots must both be (B, K, D) and the masks (B, K); got query_slots, key_slots, "
            f"query_valid, key_valid of shapes {shapes}."
        )
    key_valid = key_valid.flatten()
    query_index = (query_valid.flatten() & key_valid).nonzero().squeeze(1)
    with torch.autocast(key_slots.device.type, enabled=False):
        keys = F.normalize(key_slots.detach().flatten(0, 1)[key_valid].float(), dim=1)
    keys, offset = _gather_rows(keys, process_group)
    stats = {"queries": int(query_index.numel()), "keys": int(keys.shape[0]), "empty": 0}
    if query_index.numel() < 2:
        stats["empty"] = 1
        zero = query_slots.sum() * 0.0
        if predictor is not None:
            zero = zero + sum(p.sum() for p in predictor.parameters()) * 0.0
        return zero.float(), stats
    queries = query_slots.flatten(0, 1)[query_index]
    if predictor is not None:
        queries = predictor(queries)
    labels = key_valid.long().cumsum(0)[query_index] - 1 + offset
    with torch.autocast(queries.device.type, enabled=False):
        logits = F.normalize(queries.float(), dim=1) @ keys.t() / temperature
        loss = F.cross_entropy(logits, labels) * (2 * temperature)
    return loss, stats


@torch.no_grad()
def update_center(
    center: torch.Tensor,
    teacher_scores: Sequence[torch.Tensor],
    momentum: float = 0.9,
    *,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """New teacher center: ``momentum·center + (1 − momentum)·mean`` of the raw teacher scores.

    The mean runs over every pixel of every given map (both views) of every process (sum and count are
    all-reduced, so unequal batches are weighted by their pixels).

    Args:
        center: (1, K) current center.
        teacher_scores: the (B, K, h, w) raw (un-aligned) teacher score maps of both views.
        momentum: center momentum (0.9).
        process_group: group to reduce over; None = the default group when distributed is initialised.

    Returns:
        (1, K) fp32 new center (assign it with ``head.center.copy_(...)``).
    """
    sums = sum(s.double().sum(dim=(0, 2, 3)) for s in teacher_scores)
    count = sum(s.shape[0] * s.shape[2] * s.shape[3] for s in teacher_scores)
    packed = torch.cat([sums, sums.new_tensor([count])])
    if _distributed(process_group):
        dist.all_reduce(packed, group=process_group)
    batch_center = (packed[:-1] / packed[-1]).float().view(1, -1)
    return center.float() * momentum + batch_center * (1.0 - momentum)


def slotcon_direction_loss(
    student_scores: torch.Tensor,
    student_slots: torch.Tensor,
    teacher_scores: torch.Tensor,
    teacher_slots: torch.Tensor,
    student_view: tuple[torch.Tensor, torch.Tensor],
    teacher_view: tuple[torch.Tensor, torch.Tensor],
    center: torch.Tensor,
    *,
    predictor: nn.Module | None,
    group_weight: float = 0.5,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
    contrastive_temp: float = 0.2,
    process_group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
    """One direction of the SlotCon objective: the student of one view against the teacher of the other.

    ``G`` = :func:`group_loss` of the aligned student scores against the aligned teacher scores, ``C`` =
    :func:`contrastive_loss` of the student slots (valid in the student's view and the teacher's view) against
    the teacher slots. The student view's terms depend on no other student tensor, so the two directions
    can be back-propagated separately (see ``docs/decon.md``, memory).

    Args:
        student_scores: (B, K, h, w) raw student cosine scores of view v.
        student_slots: (B, K, D) student slots of view v.
        teacher_scores: (B, K, h, w) raw teacher cosine scores of the other view o.
        teacher_slots: (B, K, D) teacher slots of view o.
        student_view: (boxes (B, 4), flips (B,)) of view v (see :func:`align_scores`).
        teacher_view: (boxes (B, 4), flips (B,)) of view o.
        center: (1, K) teacher center.
        predictor: slot predictor applied to the queries.
        group_weight: β (0.5).
        student_temp: student temperature of the group loss (0.1).
        teacher_temp: teacher temperature of the group loss (0.07).
        contrastive_temp: InfoNCE temperature (0.2).
        process_group: group for the key gathering (default: the default group when initialised).

    Returns:
        ``β·G + (1 − β)·C``, ``G``, ``C`` (fp32 scalars with gradient) and the :func:`contrastive_loss` stats.
    """
    aligned_student = align_scores(student_scores, *student_view)
    with torch.no_grad():
        aligned_teacher = align_scores(teacher_scores, *teacher_view)
    group = group_loss(aligned_student, aligned_teacher, center, student_temp=student_temp, teacher_temp=teacher_temp)
    contrastive, stats = contrastive_loss(
        student_slots,
        teacher_slots,
        slot_validity(student_scores),
        slot_validity(teacher_scores),
        predictor=predictor,
        temperature=contrastive_temp,
        process_group=process_group,
    )
    return group_weight * group + (1.0 - group_weight) * contrastive, group, contrastive, stats


def _direction_terms(view: int, group: torch.Tensor, contrastive: torch.Tensor, stats: dict[str, int]) -> dict:
    names = ("G12", "C12") if view == 0 else ("G21", "C21")
    return {
        names[0]: group.detach(),
        names[1]: contrastive.detach(),
        "queries": stats["queries"],
        "keys": stats["keys"],
        "empty_contrastive": stats["empty"],
    }


def _merge_terms(first: dict, second: dict) -> dict:
    merged = {**first, **second}
    for counter in ("queries", "keys", "empty_contrastive"):
        merged[counter] = first[counter] + second[counter]
    return merged


def slotcon_loss(
    student_scores: Sequence[torch.Tensor],
    student_slots: Sequence[torch.Tensor],
    teacher_scores: Sequence[torch.Tensor],
    teacher_slots: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    flips: Sequence[torch.Tensor],
    center: torch.Tensor,
    *,
    predictor: nn.Module | None,
    group_weight: float = 0.5,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
    contrastive_temp: float = 0.2,
    process_group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | int]]:
    """The SlotCon objective of one level for two views: ``β·(G12 + G21) + (1 − β)·(C12 + C21)``.

    ``G12`` distils the teacher's view-2 scores into the student's view-1 scores (both aligned), ``C12`` uses
    the student's view-1 slots as queries and the teacher's view-2 slots as keys; ``G21``/``C21`` the reverse
    (see :func:`slotcon_direction_loss`).

    Args:
        student_scores: per view, (B, K, h, w) raw student cosine scores.
        student_slots: per view, (B, K, D) student slots.
        teacher_scores: per view, (B, K, h, w) raw teacher cosine scores.
        teacher_slots: per view, (B, K, D) teacher slots.
        boxes: per view, (B, 4) normalised overlap box in that view's frame (see :func:`align_scores`).
        flips: per view, (B,) bool flip flags.
        center: (1, K) teacher center (not updated here, see :func:`update_center`).
        predictor: slot predictor applied to the queries.
        group_weight: β (0.5).
        student_temp: student temperature of the group loss (0.1).
        teacher_temp: teacher temperature of the group loss (0.07).
        contrastive_temp: InfoNCE temperature (0.2).
        process_group: group for the key gathering (default: the default group when initialised).

    Returns:
        The scalar fp32 loss and its terms: ``G12, G21, C12, C21`` (detached fp32 scalars) and the counters
        ``queries`` (local queries of both directions), ``keys`` (global keys of both directions) and
        ``empty_contrastive`` (directions whose contrastive term was empty, 0..2).
    """
    for name, pair in dict(
        student_scores=student_scores, student_slots=student_slots, teacher_scores=teacher_scores,
        teacher_slots=teacher_slots, boxes=boxes, flips=flips,
    ).items():  # fmt: skip
        if len(pair) != 2:
            raise ValueError(f"slotcon_loss: {name} must hold the two views, got {len(pair)} entries.")
    settings = dict(
        predictor=predictor,
        group_weight=group_weight,
        student_temp=student_temp,
        teacher_temp=teacher_temp,
        contrastive_temp=contrastive_temp,
        process_group=process_group,
    )
    losses, terms = [], []
    for view, other in ((0, 1), (1, 0)):
        loss, group, contrastive, stats = slotcon_direction_loss(
            student_scores[view],
            student_slots[view],
            teacher_scores[other],
            teacher_slots[other],
            (boxes[view], flips[view]),
            (boxes[other], flips[other]),
            center,
            **settings,
        )
        losses.append(loss)
        terms.append(_direction_terms(view, group, contrastive, stats))
    return losses[0] + losses[1], _merge_terms(*terms)


class SlotConHead(nn.Module):
    """The SlotCon objective at one feature level: student and teacher heads, predictor and center.

    Holds the student ``projector``, ``grouping`` and ``predictor``, their teacher copies ``teacher_projector``
    and ``teacher_grouping`` (``requires_grad=False``, updated only by EMA, see :meth:`momentum_pairs`) and the
    ``center`` buffer (1, K). The encoder/decoder that produce the maps live outside.

    How to run it: keep the whole pre-training module in train mode (teacher BatchNorms use batch statistics,
    as in the reference); pass only ``requires_grad`` parameters to the optimiser; EMA-update the teacher
    before its forward; compute the teacher maps under ``torch.no_grad()``. :meth:`forward` does both views
    and updates the center after the loss (training mode only); :meth:`teacher_forward`,
    :meth:`student_loss` and :meth:`update_center_` are the same steps for a loop that back-propagates one
    student view at a time.

    Args:
        in_channels: channels of the level's feature maps (from ``feature_info`` / the decoder).
        num_prototypes: K (256 COCO, 2048 ImageNet).
        hidden_dim: projector and predictor width (4096).
        out_dim: slot dimension D (256).
        group_weight: β (0.5).
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature, also the grouping temperature (0.07).
        contrastive_temp: InfoNCE temperature (0.2).
        center_momentum: center EMA momentum (0.9).
        save_memory: projector's recomputing backward (see :class:`DenseProjector`).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_prototypes: int = 256,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        group_weight: float = 0.5,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        contrastive_temp: float = 0.2,
        center_momentum: float = 0.9,
        save_memory: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= group_weight <= 1.0:
            raise ValueError(f"group_weight (β) must be in [0, 1], got {group_weight}.")
        self.projector = DenseProjector(in_channels, hidden_dim, out_dim, save_memory=save_memory)
        self.grouping = SemanticGrouping(num_prototypes, out_dim, teacher_temp)
        self.predictor = SlotPredictor(out_dim, hidden_dim)
        self.teacher_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.teacher_grouping = copy.deepcopy(self.grouping).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, num_prototypes))
        self.group_weight = group_weight
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.contrastive_temp = contrastive_temp
        self.center_momentum = center_momentum

    def momentum_pairs(self, *, prototypes: bool = True) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) module pairs to EMA-update with :func:`predec.pretrain.ema.update_momentum`.

        Args:
            prototypes: include the grouping prototypes. ``False`` reproduces quirk (b) of the public DeCon code
                (teacher decoder prototypes never updated) when used for the decoder heads.
        """
        pairs = [(self.projector, self.teacher_projector)]
        if prototypes:
            pairs.append((self.grouping, self.teacher_grouping))
        return pairs

    @torch.no_grad()
    def teacher_forward(self, teacher_maps: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Teacher projector + grouping of both views, without gradient.

        Args:
            teacher_maps: per view, (B, C, h, w) teacher features of this level.

        Returns:
            Per view, (scores (B, K, h, w), slots (B, K, D)).
        """
        return [self.teacher_grouping(self.teacher_projector(maps)) for maps in teacher_maps]

    def student_loss(
        self,
        view: int,
        student_maps: torch.Tensor,
        teacher_outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        boxes: Sequence[torch.Tensor],
        flips: Sequence[torch.Tensor],
        *,
        process_group: dist.ProcessGroup | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | int]]:
        """The directions of one student view: ``β·G + (1 − β)·C`` against the teacher's other view.

        ``student_loss(0, ...) + student_loss(1, ...)`` is :meth:`forward`'s loss; back-propagating each view
        separately gives the same gradients with half the activation memory.

        Args:
            view: 0 or 1, the student view.
            student_maps: (B, C, h, w) student features of this level for that view.
            teacher_outputs: :meth:`teacher_forward` of both views.
            boxes: per view, (B, 4) normalised overlap boxes (see :func:`align_scores`).
            flips: per view, (B,) bool flip flags.
            process_group: distributed group (default: the default group when initialised).

        Returns:
            The scalar fp32 loss and its terms (``G12, C12`` for view 0, ``G21, C21`` for view 1, and the
            counters of :func:`slotcon_loss`).
        """
        if view not in (0, 1):
            raise ValueError(f"view must be 0 or 1, got {view}.")
        other = 1 - view
        scores, slots = self.grouping(self.projector(student_maps))
        teacher_scores, teacher_slots = teacher_outputs[other]
        loss, group, contrastive, stats = slotcon_direction_loss(
            scores,
            slots,
            teacher_scores,
            teacher_slots,
            (boxes[view], flips[view]),
            (boxes[other], flips[other]),
            self.center,
            predictor=self.predictor,
            group_weight=self.group_weight,
            student_temp=self.student_temp,
            teacher_temp=self.teacher_temp,
            contrastive_temp=self.contrastive_temp,
            process_group=process_group,
        )
        return loss, _direction_terms(view, group, contrastive, stats)

    @torch.no_grad()
    def update_center_(
        self,
        teacher_outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        """Update the ``center`` buffer in place from :meth:`teacher_forward` of both views (after the loss)."""
        scores = [view_scores for view_scores, _ in teacher_outputs]
        self.center.copy_(update_center(self.center, scores, self.center_momentum, process_group=process_group))

    def forward(
        self,
        student_maps: Sequence[torch.Tensor],
        teacher_maps: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        flips: Sequence[torch.Tensor],
        *,
        process_group: dist.ProcessGroup | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | int]]:
        """The level's loss for both views; updates the center afterwards in training mode.

        Args:
            student_maps: per view, (B, C, h, w) student features of this level.
            teacher_maps: per view, (B, C, h, w) teacher features of this level (computed without gradient).
            boxes: per view, (B, 4) normalised overlap boxes (see :func:`align_scores`).
            flips: per view, (B,) bool flip flags.
            process_group: distributed group (default: the default group when initialised).

        Returns:
            The scalar fp32 loss and the terms of :func:`slotcon_loss`.
        """
        if len(student_maps) != 2 or len(teacher_maps) != 2:
            raise ValueError(
                f"SlotConHead expects the two views, got {len(student_maps)} student and {len(teacher_maps)} "
                "teacher maps."
            )
        teacher = self.teacher_forward(teacher_maps)
        first, first_terms = self.student_loss(0, student_maps[0], teacher, boxes, flips, process_group=process_group)
        second, second_terms = self.student_loss(1, student_maps[1], teacher, boxes, flips, process_group=process_group)
        if self.training:
            self.update_center_(teacher, process_group=process_group)
        return first + second, _merge_terms(first_terms, second_terms)


def decon_loss(
    encoder_loss: torch.Tensor | None, decoder_level_losses: Sequence[torch.Tensor], alpha: float
) -> torch.Tensor:
    """DeCon's weighted loss ``α·L_enc + (1 − α)·mean(L_dec levels)``.

    Rules: without decoder levels the result is ``encoder_loss`` (plain SlotCon); α = 0 drops the encoder heads
    (pass ``encoder_loss=None``); α = 1 with decoder levels is rejected (the decoder would get no loss).

    Args:
        encoder_loss: scalar SlotCon loss at the encoder output, or None when α = 0.
        decoder_level_losses: scalar SlotCon losses of the decoder levels (one for DeCon-SL, P2..P5 for ML).
        alpha: encoder loss weight α in [0, 1].

    Returns:
        The scalar total loss.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (encoder_loss_weight) must be in [0, 1], got {alpha}.")
    if not decoder_level_losses:
        if encoder_loss is None:
            raise ValueError("decon_loss: no encoder loss and no decoder level losses; nothing to optimise.")
        return encoder_loss
    if alpha == 1.0:
        raise ValueError(
            "alpha (encoder_loss_weight) = 1 with a decoder gives the decoder no loss; use alpha < 1 or no decoder."
        )
    if alpha == 0.0 and encoder_loss is not None:
        raise ValueError("alpha = 0 drops the encoder heads: pass encoder_loss=None (and do not build them).")
    if alpha > 0.0 and encoder_loss is None:
        raise ValueError(f"alpha = {alpha} > 0 needs the encoder loss; got encoder_loss=None.")
    decoder_loss = torch.stack([loss.float() for loss in decoder_level_losses]).mean()
    if encoder_loss is None:
        return decoder_loss
    return alpha * encoder_loss + (1.0 - alpha) * decoder_loss

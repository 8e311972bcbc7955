"""SlotCon and DeCon as one LightningModule: :class:`DeConModule`.

SlotCon: the objective on the encoder's deepest map only. DeCon: plus a student/teacher decoder with the decoder loss
at its default level (DeCon-SL) or at several levels (DeCon-ML), ``L = α·L_enc + (1 − α)·L_dec``.

Checkpoint layout (the weight resolver relies on it): ``student.encoder.*``, ``student.decoder.*``,
``teacher.encoder.*``, ``teacher.decoder.*`` (each part built by ``predec.create_model``'s classes, so the keys are
a downstream ``DenseModel``'s), and ``head.*`` for the SlotCon heads. See ``docs/pretraining.md``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn

from predec.config import ConfigError, from_dict, to_dict
from predec.models.decoders.base import DecoderOutput
from predec.pretrain.config import SSL_METHODS, PretrainConfig, check_pretrain_config
from predec.pretrain.method import LossTracker, SSLMethod, loss_window
from predec.pretrain.networks import EncoderDecoder, MomentumPair, attach_levels, build_networks, freeze_unreached
from predec.pretrain.slotcon import SlotConHead, decon_loss

logger = logging.getLogger(__name__)


class DeConModule(SSLMethod):
    """SlotCon (no decoder: the objective on the encoder's deepest map) and DeCon (plus a decoder).

    Modules: ``student`` and ``teacher`` (:class:`EncoderDecoder`; the teacher an EMA copy, never trained, in train
    mode so its BatchNorms use batch statistics and the FPN skip dropout is active in it too, as in the reference
    code), and ``head``: a :class:`~predec.pretrain.slotcon.SlotConHead` per level — ``head.encoder`` on the encoder
    output (absent when α = 0) and ``head.decoder_<level>`` per decoder level (own projector, prototypes,
    predictor and center each). Parameters no loss reaches are frozen (:func:`freeze_unreached`).

    Loss: ``α·L_enc + (1 − α)·mean_levels(L_dec)`` (:func:`~predec.pretrain.slotcon.decon_loss`). Momentum sides:
    ``encoder`` (teacher encoder, encoder head) and ``decoder`` (teacher decoder, decoder heads; their prototypes
    are skipped under ``ssl.quirk_frozen_decoder_prototypes``).

    Args:
        config: the recipe (:class:`PretrainConfig` or its plain dict, as stored in checkpoints).
        build_weights: resolve ``encoder_weights``/``decoder_weights`` (False when a checkpoint overwrites them).
    """

    def __init__(self, config: PretrainConfig | Mapping[str, Any], build_weights: bool = True) -> None:
        super().__init__()
        self.config = config if isinstance(config, PretrainConfig) else from_dict(PretrainConfig, config)
        if self.config.method not in SSL_METHODS:
            raise ConfigError(f"DeConModule runs {', '.join(SSL_METHODS)}, not method={self.config.method!r}.")
        check_pretrain_config(self.config)
        self.save_hyperparameters({"config": to_dict(self.config)})
        self.losses = LossTracker(loss_window(self.config.trainer.max_steps))
        ssl = self.config.ssl
        encoder, decoder = build_networks(self.config.model, load_weights=build_weights)
        self.alpha = 1.0 if decoder is None else ssl.encoder_loss_weight
        self.levels = [] if decoder is None else attach_levels(decoder, self.config.method, ssl.levels)
        self.student = EncoderDecoder(encoder, decoder)
        self.frozen = freeze_unreached(self.student, self.levels, encoder_loss=self.alpha > 0)
        if self.frozen:
            rank_zero_only(logger.info)(
                f"{len(self.frozen)} parameters are reached by no loss and stay at their initial values: "
                f"{', '.join(self.frozen[:6])}{' ...' if len(self.frozen) > 6 else ''}"
            )
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        head_kwargs = dict(
            num_prototypes=ssl.num_prototypes,
            hidden_dim=ssl.hidden_dim,
            out_dim=ssl.out_dim,
            group_weight=ssl.group_loss_weight,
            student_temp=ssl.student_temp,
            teacher_temp=ssl.teacher_temp,
            contrastive_temp=ssl.contrastive_temp,
            center_momentum=ssl.center_momentum,
            save_memory=ssl.save_memory,
        )
        heads: dict[str, SlotConHead] = {}
        if self.alpha > 0:
            heads["encoder"] = SlotConHead(encoder.channels[-1], **head_kwargs)
        for level in self.levels:
            heads[f"decoder_{level}"] = SlotConHead(decoder.level_channels[level], **head_kwargs)
        self.head = nn.ModuleDict(heads)
        if self.config.trainer.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def momentum_pairs(self) -> list[MomentumPair]:
        pairs = [MomentumPair(self.student.encoder, self.teacher.encoder, "encoder")]
        if self.student.decoder is not None:
            pairs.append(MomentumPair(self.student.decoder, self.teacher.decoder, "decoder"))
        for name, head in self.head.items():
            side = "encoder" if name == "encoder" else "decoder"
            prototypes = side == "encoder" or not self.config.ssl.quirk_frozen_decoder_prototypes
            pairs += [MomentumPair(s, t, side) for s, t in head.momentum_pairs(prototypes=prototypes)]
        return pairs

    def _views(self, batch: Mapping[str, Any]) -> list[Tensor]:
        views = [batch["view1"], batch["view2"]]
        if self.config.trainer.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def ssl_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The DeCon (or SlotCon) loss of a two-view batch, one student view at a time.

        Teacher first (both views, no gradient; each head's projector and grouping), then per student view ``v``
        the directions whose student is ``v``: ``L_v = α·L_enc,v + (1 − α)·mean_levels(L_dec,v)``, so that
        ``L_0 + L_1`` is DeCon's loss. The terms of one view depend on no tensor of the other student view, so in
        training with gradients ``L_0`` is back-propagated at once (:meth:`backward_part`) and only ``L_1`` is
        returned: same gradients, half the activation memory. The centers are updated after both views.

        Args:
            batch: ``view1``/``view2`` (B, 3, S, S) normalised views, ``box1``/``box2`` (B, 4) overlap boxes in each
                view's frame, ``flip1``/``flip2`` (B,) flip flags (:class:`predec.data.TwoViewCrop`).

        Returns:
            The loss still to back-propagate (``L_1``; ``L_0 + L_1`` without gradients) and the terms: ``loss``
            (``L_0 + L_1``), ``loss_enc``, ``loss_dec``, per level ``<level>/G12`` ... ``/C21`` (``enc/...`` for
            the encoder), ``empty_contrastive`` (contrastive directions of this batch without any valid slot,
            all levels) and, in training, ``empty_contrastive_total``.
        """
        views = self._views(batch)
        boxes, flips = [batch["box1"], batch["box2"]], [batch["flip1"], batch["flip2"]]
        with torch.no_grad():
            teacher_maps = [self._level_maps(*self.teacher(view)) for view in views]
        teacher = {
            name: head.teacher_forward([maps[name] for maps in teacher_maps]) for name, head in self.head.items()
        }
        del teacher_maps
        backward_early = self.training and torch.is_grad_enabled()
        terms: dict[str, Tensor | float] = {}
        losses: list[Tensor] = []
        level_values: dict[str, list[Tensor]] = {name: [] for name in self.head}
        empty = 0
        for view in (0, 1):
            maps = self._level_maps(*self.student(views[view]))
            level_losses = {}
            for name, head in self.head.items():
                level_losses[name], level_terms = head.student_loss(view, maps[name], teacher[name], boxes, flips)
                prefix = "enc" if name == "encoder" else name.removeprefix("decoder_")
                for key in ("G12", "C12") if view == 0 else ("G21", "C21"):
                    terms[f"{prefix}/{key}"] = level_terms[key]
                empty += int(level_terms["empty_contrastive"])
                level_values[name].append(level_losses[name].detach())
            del maps
            loss = decon_loss(
                level_losses.get("encoder"),
                [level_losses[f"decoder_{level}"] for level in self.levels],
                self.alpha,
            )
            del level_losses
            if view == 0 and backward_early:
                self.backward_part(loss, self.global_step, terms)
                loss = loss.detach()
            losses.append(loss)
        if self.training:
            for name, head in self.head.items():
                head.update_center_(teacher[name])
        totals = {name: values[0] + values[1] for name, values in level_values.items()}
        terms["loss"] = losses[0].detach() + losses[1].detach()
        if "encoder" in totals:
            terms["loss_enc"] = totals["encoder"]
        if self.levels:
            terms["loss_dec"] = torch.stack([totals[f"decoder_{level}"].float() for level in self.levels]).mean()
        terms["empty_contrastive"] = float(empty)
        if self.training:
            self.empty_contrastive_total += empty
            terms["empty_contrastive_total"] = float(self.empty_contrastive_total)
        return (losses[1] if backward_early else losses[0] + losses[1]), terms

    def _level_maps(self, features: list[Tensor], decoded: DecoderOutput | None) -> dict[str, Tensor]:
        """The map each head reads: ``encoder`` the encoder's deepest map, ``decoder_<level>`` a decoder level."""
        maps = {"encoder": features[-1]} if "encoder" in self.head else {}
        for level in self.levels:
            assert decoded is not None
            maps[f"decoder_{level}"] = decoded.levels[level]
        return maps

    def pretrained_state_dict(self) -> dict[str, Tensor]:
        """``student.*`` and ``teacher.*`` encoder/decoder tensors (contiguous), the transferable weights."""
        state = {**self.student.state_dict(prefix="student."), **self.teacher.state_dict(prefix="teacher.")}
        return {k: v.detach().contiguous() for k, v in state.items()}

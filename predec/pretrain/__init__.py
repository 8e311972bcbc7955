"""Self-supervised pre-training building blocks: the SlotCon/DeCon objective, heads and the EMA teacher."""

from predec.pretrain.ema import decon_momenta, momentum_at, update_momentum
from predec.pretrain.heads import DenseProjector, SemanticGrouping, SlotPredictor
from predec.pretrain.slotcon import (
    SlotConHead,
    align_scores,
    contrastive_loss,
    decon_loss,
    group_loss,
    slot_validity,
    slotcon_direction_loss,
    slotcon_loss,
    update_center,
)

__all__ = [
    "DenseProjector",
    "SemanticGrouping",
    "SlotConHead",
    "SlotPredictor",
    "align_scores",
    "contrastive_loss",
    "decon_loss",
    "decon_momenta",
    "group_loss",
    "momentum_at",
    "slot_validity",
    "slotcon_direction_loss",
    "slotcon_loss",
    "update_center",
    "update_momentum",
]

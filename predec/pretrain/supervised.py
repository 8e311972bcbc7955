"""Supervised classification pre-training of a timm backbone: the offline way to a "pre-trained backbone".

``method: supervised`` trains ``timm.create_model(model.encoder, num_classes=<classes>)`` with cross-entropy on
SynthObjects (``data.dataset: synth_objects``; ``reader_kwargs.label_mode``: ``shape`` or ``shape_texture``) or on
class sub-folders (``folder``: ``data.root`` to train, ``data.val_root`` held out). The run writes
``classifier.safetensors``, the classification model's state dict with timm's own keys (classifier included), and
``metrics.json`` with the top-1 accuracy on the held-out split. The file is a weight spec for an encoder
(``model.encoder_weights``) or for the ×Net decoder backbone (``model.decoder_weights``): the weight resolver drops
the classifier and loads the rest.

Augmentation: ``RandomResizedCrop(view_size, scale=crop_scale)`` + horizontal flip; evaluation: resize of the short
side to ``view_size`` + centre crop (an identity for SynthObjects rendered at ``view_size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from predec.config import ConfigError, from_dict, to_dict
from predec.engine.guards import check_finite_loss
from predec.engine.trainer import step_optimizers
from predec.models.weights import save_state_dict
from predec.pretrain.config import PretrainConfig, check_pretrain_config
from predec.pretrain.data import classification_classes
from predec.pretrain.method import STATS_KEY, LossTracker, loss_window

CLASSIFIER_FILE = "classifier.safetensors"


class ClassificationModule(L.LightningModule):
    """Cross-entropy training of a timm classification model, top-1 accuracy on the held-out split.

    Args:
        config: the recipe (:class:`PretrainConfig` with ``method: supervised``, or its plain dict).
        build_weights: unused (supervised pre-training starts from random weights); kept for a uniform builder.

    Attributes:
        model: the timm model (timm's keys, classifier included).
        classes: class names in label order.
        last_metrics: ``{"top1", "num_images"}`` of the latest evaluation.
    """

    def __init__(self, config: PretrainConfig | Mapping[str, Any], build_weights: bool = True) -> None:
        super().__init__()
        self.config = config if isinstance(config, PretrainConfig) else from_dict(PretrainConfig, config)
        if self.config.method != "supervised":
            raise ConfigError(f"ClassificationModule runs method=supervised, not {self.config.method!r}.")
        check_pretrain_config(self.config)
        model_cfg = self.config.model
        self.save_hyperparameters({"config": to_dict(self.config)})
        self.classes = classification_classes(self.config.data)
        self.model = timm.create_model(
            model_cfg.encoder.split(".", 1)[0],
            pretrained=False,
            num_classes=len(self.classes),
            in_chans=model_cfg.in_chans,
            **model_cfg.encoder_kwargs,
        )
        if self.config.trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.losses = LossTracker(loss_window(self.config.trainer.max_steps))
        self.last_metrics: dict[str, Any] = {}
        self._correct = self._count = 0

    def forward(self, images: Tensor) -> Tensor:
        """Class logits (B, num_classes) of normalised images (B, in_chans, H, W)."""
        if self.config.trainer.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        check_finite_loss(loss, self.global_step, {"ce": loss.detach()}, trainer=self.trainer)
        self.losses.add(float(loss.detach()))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=labels.shape[0])
        self.log("train/top1", accuracy, batch_size=labels.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.config
        return step_optimizers(self.model, config.optim, config.schedule, config.trainer, config.data.batch_size)

    def on_validation_epoch_start(self) -> None:
        self._correct = self._count = 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self._correct += int((self(images).argmax(1) == labels).sum())
        self._count += int(labels.numel())

    def on_validation_epoch_end(self) -> None:
        counts = torch.tensor([self._correct, self._count], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        correct, total = (float(v) for v in counts)
        self.last_metrics = {"top1": correct / total if total else float("nan"), "num_images": int(total)}
        if not self.trainer.sanity_checking:
            self.log("val/top1", self.last_metrics["top1"], sync_dist=False, rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STATS_KEY] = self.losses.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.losses.load_state_dict(checkpoint.get(STATS_KEY) or {})

    def write_outputs(self, root: str | Path) -> dict[str, Any]:
        """Write ``classifier.safetensors`` (timm keys) into ``root``; return the metrics record's entries."""
        path = Path(root) / CLASSIFIER_FILE
        save_state_dict(self.model.state_dict(), path)
        return {
            **self.last_metrics,
            "split": "held-out",
            "classes": list(self.classes),
            "classifier": str(path),
            **self.losses.summary(),
        }

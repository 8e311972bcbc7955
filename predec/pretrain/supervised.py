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
from torch.utils.data import Dataset
from torchvision.transforms import v2

from predec.config import ConfigError, from_dict, to_dict
from predec.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from predec.engine.guards import check_finite_loss
from predec.engine.trainer import world_size
from predec.optim import build_optimizer, build_scheduler
from predec.pretrain.module import (
    STATS_KEY,
    LossTracker,
    PretrainConfig,
    PretrainDataConfig,
    check_pretrain_config,
    check_reader_kwargs,
    loss_window,
    save_safetensors,
)

CLASSIFIER_FILE = "classifier.safetensors"


def dataset_classes(config: PretrainDataConfig) -> list[str]:
    """Class names in label order: SynthObjects' classes of ``reader_kwargs.label_mode``, or the sorted
    sub-folder names of ``data.root``."""
    if config.dataset == "synth_objects":
        from predec.data import object_classes

        return object_classes(config.reader_kwargs.get("label_mode", "shape"))
    if config.dataset == "folder":
        from predec.data.datasets.base import require_dir

        root = require_dir(Path(str(config.root)), "one sub-folder per class")
        classes = sorted(path.name for path in root.iterdir() if path.is_dir())
        if not classes:
            raise ConfigError(f"data.root={config.root!r} has no class sub-folders (root/<class>/<images>).")
        return classes
    raise ConfigError(f"method=supervised needs data.dataset=synth_objects or folder, not {config.dataset!r}.")


def classification_transform(config: PretrainDataConfig, train: bool) -> v2.Compose:
    """Training (random resized crop + flip) or evaluation (resize + centre crop) transform, then normalisation."""
    size = config.view_size
    if train:
        steps: list[Any] = [
            v2.RandomResizedCrop(size, scale=tuple(config.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def classification_datasets(config: PretrainDataConfig, train: bool) -> Dataset:
    """The training (``train=True``) or held-out ``(image, label)`` set of a supervised recipe.

    SynthObjects: ``num_train`` images of seed ``synth_seed`` / ``num_val`` images of seed ``synth_seed + 1``.
    Folders: ``root`` / ``val_root``, labels pinned to the training folder's classes.
    """
    transform = classification_transform(config, train)
    if config.dataset == "synth_objects":
        from predec.data import SynthObjects

        check_reader_kwargs(SynthObjects, config.reader_kwargs)
        return SynthObjects(
            config.num_train if train else config.num_val,
            size=tuple(config.image_size),
            seed=config.synth_seed if train else config.synth_seed + 1,
            transform=transform,
            **config.reader_kwargs,
        )
    from predec.data import ClassificationFolder

    root = config.root if train else config.val_root
    check_reader_kwargs(ClassificationFolder, config.reader_kwargs)
    return ClassificationFolder(str(root), classes=dataset_classes(config), transform=transform, **config.reader_kwargs)


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
        self.classes = dataset_classes(self.config.data)
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
        trainer_cfg = self.config.trainer
        global_batch = self.config.data.batch_size * world_size(trainer_cfg) * trainer_cfg.accumulate_grad_batches
        optimizer = build_optimizer(self.model, self.config.optim, global_batch_size=global_batch)
        scheduler = build_scheduler(optimizer, self.config.schedule, total_steps=trainer_cfg.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

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
        save_safetensors(self.model.state_dict(), path)
        return {
            **self.last_metrics,
            "split": "held-out",
            "classes": list(self.classes),
            "classifier": str(path),
            **self.losses.summary(),
        }

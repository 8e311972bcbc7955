"""The pre-training engine: recipes, the SlotCon / DeCon LightningModule, data and :func:`run_pretraining`.

- :class:`PretrainConfig`: the recipe schema of ``predec pretrain`` (``method``: ``supervised``, ``slotcon``,
  ``decon-sl``, ``decon-ml``), built from the same parts as the dense recipes (optimiser, schedule, trainer).
- :class:`SSLMethod`: a generic self-supervised LightningModule in the style of solo-learn. A method declares its
  :attr:`~SSLMethod.momentum_pairs` (which modules are EMA copies of which, and on which side of the network) and
  implements :meth:`~SSLMethod.ssl_loss`; the loop (teacher EMA before the teacher forward with the cosine
  momentum schedule, NaN stop naming the step and the terms, logging) stays generic. The learnable parameters are
  those with ``requires_grad``; teachers never have it.
- :class:`DeConModule`: SlotCon (encoder heads only) and DeCon (plus a student/teacher decoder with the decoder
  loss at its default level, DeCon-SL, or at several levels, DeCon-ML), ``L = α·L_enc + (1 − α)·L_dec``.
- :func:`run_pretraining`: one run in its run directory, resumable, as ``train_dense`` does for dense models.

Checkpoint layout (the weight resolver relies on it): ``student.encoder.*``, ``student.decoder.*``,
``teacher.encoder.*``, ``teacher.decoder.*`` (each part built by ``predec.create_model``'s classes, so the keys are
a downstream ``DenseModel``'s), and ``head.*`` for the SlotCon heads. See ``docs/pretraining.md``.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning as L
import safetensors.torch
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from predec.config import ConfigError, OptimConfig, ScheduleConfig, TrainerConfig, from_dict, to_dict
from predec.engine.datamodule import SeededSamples, ShardSampler, StepBatchSampler
from predec.engine.guards import check_finite_loss
from predec.engine.run_dir import FINISHED, RUNNING, RunDir
from predec.engine.trainer import build_trainer, uses_cuda, world_size
from predec.models.decoders.base import DecoderOutput
from predec.models.encoders import TimmBackbone
from predec.optim import build_optimizer, build_scheduler, check_schedule
from predec.pretrain.ema import decon_momenta, update_momentum
from predec.pretrain.slotcon import SlotConHead, decon_loss

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("supervised", "slotcon", "decon-sl", "decon-ml")
SSL_METHODS: tuple[str, ...] = ("slotcon", "decon-sl", "decon-ml")
WEIGHTS_FILE = "weights.safetensors"
STATS_KEY = "predec_pretrain_stats"

# Settings that may change when an interrupted run is resumed (they do not change its result).
RUNTIME_KEYS: tuple[str, ...] = (
    "name",
    "output_dir",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "data.num_workers",
)


# --------------------------------------------------------------------------------------------------------------
# Recipe schema
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PretrainModelConfig:
    """The networks being pre-trained (names as in :func:`predec.create_model`).

    Attributes:
        arch: decoder architecture pre-trained with the encoder (``fpn``, ``fcn``, ``unet``, ``deeplabv3plus``,
            ``xnet``); ``None`` for SlotCon (encoder only) and supervised pre-training.
        encoder: timm model name of the encoder (supervised: the classification model trained).
        decoder: timm classification model name of the ×Net decoder backbone (``arch: xnet`` only).
        encoder_weights: weight spec the encoder starts from (None: random init, as the papers).
        decoder_weights: weight spec the decoder starts from (e.g. a supervised ``classifier.safetensors`` for
            the ×Net decoder backbone).
        in_chans: input channels.
        encoder_kwargs: extra ``timm.create_model`` arguments of the encoder.
        decoder_kwargs: options of the decoder (FPN: ``skip_dropout``, ``skip_dropout_mode``, ``channels``...).
    """

    arch: str | None = None
    encoder: str = "resnet50"
    decoder: str | None = None
    encoder_weights: str | None = None
    decoder_weights: str | None = None
    in_chans: int = 3
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SSLConfig:
    """The SlotCon objective at each level and DeCon's weighting (``docs/decon.md``; defaults: the papers').

    Attributes:
        encoder_loss_weight: α of ``L = α·L_enc + (1 − α)·L_dec``; 0 drops the encoder heads; 1 is rejected with a
            decoder. Ignored by ``slotcon`` (encoder loss only).
        levels: decoder levels the loss attaches to; None: the decoder's ``default_level`` (``decon-sl``) or every
            level (``decon-ml``; FPN: P2..P5).
        num_prototypes: K (256 for COCO, 2048 for ImageNet).
        hidden_dim: projector and predictor width (4096).
        out_dim: slot dimension D (256).
        group_loss_weight: β of ``β·(G12 + G21) + (1 − β)·(C12 + C21)`` at every level (0.5).
        student_temp: student temperature of the group loss (0.1).
        teacher_temp: teacher / grouping temperature (0.07).
        contrastive_temp: InfoNCE temperature (0.2).
        center_momentum: teacher-center EMA momentum (0.9).
        teacher_momentum: base momentum of the teacher EMA, rising to 1 on a cosine over the run (0.99).
        save_memory: the projectors' chunked, recomputing forward/backward (one hidden-size tensor kept instead of six).
        quirk_shared_momentum_counter: reproduce quirk (a) of the public DeCon code: encoder and decoder EMA updates
            advance one shared counter (momentum on a 2K schedule). Off: both follow the K-step schedule.
        quirk_frozen_decoder_prototypes: reproduce quirk (b): the teacher's decoder prototypes are never
            EMA-updated. Off: they follow the student's like every other teacher part.
    """

    encoder_loss_weight: float = 0.5
    levels: list[str] | None = None
    num_prototypes: int = 256
    hidden_dim: int = 4096
    out_dim: int = 256
    group_loss_weight: float = 0.5
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    contrastive_temp: float = 0.2
    center_momentum: float = 0.9
    teacher_momentum: float = 0.99
    save_memory: bool = True
    quirk_shared_momentum_counter: bool = False
    quirk_frozen_decoder_prototypes: bool = False


@dataclass
class PretrainDataConfig:
    """Pre-training images and loaders.

    Attributes:
        dataset: ``synth_scenes`` (SynthScenes, self-supervised only), ``synth_objects`` (SynthObjects: classes
            for ``supervised``, plain images otherwise) or ``folder`` (``root``: any image tree for self-supervised
            methods, class sub-folders for ``supervised``).
        root: image folder (``folder``).
        val_root: held-out class folder of ``supervised`` on a ``folder`` dataset.
        num_train: synthetic: number of training images.
        num_val: synthetic: number of held-out images (``supervised``; rendered with ``synth_seed + 1``).
        image_size: synthetic: rendered size [H, W].
        synth_seed: synthetic: generator seed.
        reader_kwargs: extra arguments of the dataset (SynthObjects: ``label_mode``; SynthScenes: render options;
            folders: ``extensions``).
        view_size: side of each view (self-supervised) or of the training crop (supervised).
        crop_scale: RandomResizedCrop area range (views and supervised crops).
        min_overlap: self-supervised: minimal overlap of view 2 with view 1, fraction of view 2's area.
        batch_size: images per device and step.
        eval_batch_size: supervised evaluation images per device.
        num_workers: loader worker processes.
    """

    dataset: Literal["synth_scenes", "synth_objects", "folder"] = "synth_scenes"
    root: str | None = None
    val_root: str | None = None
    num_train: int = 1024
    num_val: int = 256
    image_size: list[int] = field(default_factory=lambda: [96, 96])
    synth_seed: int = 0
    reader_kwargs: dict[str, Any] = field(default_factory=dict)
    view_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    min_overlap: float = 0.01
    batch_size: int = 64
    eval_batch_size: int = 64
    num_workers: int = 0


@dataclass
class PretrainConfig:
    """A pre-training recipe (``predec pretrain``).

    Attributes:
        name: run name; the run directory is ``output_dir/name``.
        output_dir: parent of run directories.
        seed: global seed (initialisation, data order, augmentation).
        method: ``supervised`` (classification), ``slotcon`` (encoder), ``decon-sl`` / ``decon-ml`` (encoder and
            decoder, one / several decoder levels).
        model: networks.
        ssl: the self-supervised objective (ignored by ``supervised``).
        data: images and loaders.
        optim: optimiser (the papers: LARS, lr 1.0 × batch / 256, weight decay 1e-5).
        schedule: learning-rate schedule (the papers: linear warm-up from lr/100, cosine to 1e-6).
        trainer: Lightning trainer (devices, nodes, strategy, precision, steps, checkpoints).
    """

    name: str = "pretrain"
    output_dir: str = "runs"
    seed: int = 0
    method: Literal["supervised", "slotcon", "decon-sl", "decon-ml"] = "slotcon"
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="lars", lr=1.0, weight_decay=1e-5))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(name="cosine", warmup_ratio=0.01, min_lr=1e-6)
    )
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def check_pretrain_config(config: PretrainConfig) -> None:
    """Raise a :class:`ConfigError` naming the keys if the recipe's settings contradict each other.

    Checked without building anything: method vs decoder, α rules, level count, data sources, schedule.
    """
    method, model, ssl, data = config.method, config.model, config.ssl, config.data
    if method in ("supervised", "slotcon") and model.arch is not None:
        raise ConfigError(
            f"method={method!r} pre-trains the encoder only, but model.arch={model.arch!r} names a decoder: set "
            "model.arch=null, or use method=decon-sl / decon-ml to pre-train the decoder too."
        )
    if method.startswith("decon") and model.arch is None:
        raise ConfigError(
            f"method={method!r} pre-trains a decoder: set model.arch (fpn, fcn, unet, deeplabv3plus or xnet)."
        )
    if model.arch != "xnet" and model.decoder is not None:
        raise ConfigError(
            f"model.decoder={model.decoder!r} names a ×Net decoder backbone, but model.arch={model.arch!r}: set "
            "model.arch=xnet, or model.decoder=null."
        )
    if model.arch == "xnet" and model.decoder is None:
        raise ConfigError("model.arch=xnet needs model.decoder=<timm classification model name> (e.g. resnet18).")
    if not 0.0 <= ssl.encoder_loss_weight <= 1.0:
        raise ConfigError(f"ssl.encoder_loss_weight (α) must be in [0, 1], got {ssl.encoder_loss_weight}.")
    if method.startswith("decon") and ssl.encoder_loss_weight == 1.0:
        raise ConfigError(
            f"ssl.encoder_loss_weight (α) = 1 with method={method!r} gives the decoder no loss: use α < 1 "
            "(the papers: 0.5), or method=slotcon to pre-train the encoder only."
        )
    if method == "decon-sl" and ssl.levels is not None and len(ssl.levels) != 1:
        raise ConfigError(f"method=decon-sl attaches the decoder loss to one level, got ssl.levels={ssl.levels}.")
    if ssl.levels is not None and (not ssl.levels or len(set(ssl.levels)) != len(ssl.levels)):
        raise ConfigError(f"ssl.levels={ssl.levels} must be a non-empty list of distinct level names (or null).")
    if method == "supervised":
        if model.encoder_weights is not None or model.decoder_weights is not None:
            raise ConfigError(
                "method=supervised trains the classifier from random weights: set model.encoder_weights=null and "
                "model.decoder_weights=null."
            )
        if data.dataset == "synth_scenes":
            raise ConfigError(
                "method=supervised needs image classes: data.dataset=synth_objects or folder (class sub-folders), "
                "not synth_scenes."
            )
        if data.dataset == "folder" and (data.root is None or data.val_root is None):
            raise ConfigError(
                "method=supervised on data.dataset=folder needs data.root (training class folders) and "
                "data.val_root (held-out class folders, for the top-1 accuracy)."
            )
    if data.dataset == "folder" and data.root is None:
        raise ConfigError("data.dataset=folder needs data.root (the image folder).")
    low, high = data.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"data.crop_scale={list(data.crop_scale)} must satisfy 0 < low <= high <= 1.")
    for key in ("batch_size", "eval_batch_size", "view_size"):
        if getattr(data, key) <= 0:
            raise ConfigError(f"data.{key} must be positive, got {getattr(data, key)}.")
    try:
        check_schedule(config.schedule, config.trainer.max_steps)
    except ValueError as err:
        raise ConfigError(str(err)) from None


# --------------------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------------------


def build_networks(config: PretrainModelConfig, *, load_weights: bool = True) -> tuple[TimmBackbone, nn.Module | None]:
    """The encoder and (optional) decoder, built by :class:`predec.models.base.DenseModel` so that their keys and
    shapes are exactly those of a downstream model with the same settings.

    Args:
        config: model settings.
        load_weights: resolve ``encoder_weights`` / ``decoder_weights`` (False when a checkpoint follows).
    """
    from predec.models.base import DenseModel
    from predec.models.weights import load_weights as load

    if config.arch is None:
        encoder = TimmBackbone(config.encoder, in_chans=config.in_chans, **config.encoder_kwargs)
        decoder = None
    else:
        dense = DenseModel(
            config.arch,
            encoder=config.encoder,
            decoder=config.decoder,
            task="depth",  # the head is dropped: any task builds the same encoder and decoder
            in_chans=config.in_chans,
            encoder_kwargs=dict(config.encoder_kwargs) or None,
            **config.decoder_kwargs,
        )
        encoder, decoder = dense.encoder, dense.decoder
    if load_weights:
        load(encoder, config.encoder_weights, part="encoder")
        if decoder is not None:
            load(decoder, config.decoder_weights, part="decoder")
        elif config.decoder_weights is not None:
            raise ConfigError(f"model.decoder_weights={config.decoder_weights!r} is set but there is no decoder.")
    return encoder, decoder


class EncoderDecoder(nn.Module):
    """The student (or teacher) network: encoder and optional decoder, as in a ``DenseModel`` without head.

    Args:
        encoder: the ``TimmBackbone``.
        decoder: a registered decoder, or None (SlotCon).
    """

    def __init__(self, encoder: TimmBackbone, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, images: Tensor) -> tuple[list[Tensor], DecoderOutput | None]:
        """Args:
            images: normalised views (B, in_chans, S, S).

        Returns:
            The encoder maps (strides ``encoder.reductions``) and the decoder output (None without decoder).
        """
        features = self.encoder(images)
        decoded = self.decoder(features, images) if self.decoder is not None else None
        return features, decoded


def attach_levels(decoder: nn.Module, method: str, levels: Sequence[str] | None) -> list[str]:
    """The decoder levels the DeCon loss attaches to.

    Args:
        decoder: the decoder (its ``level_channels`` and ``default_level``).
        method: ``decon-sl`` (default level) or ``decon-ml`` (every level).
        levels: explicit level names, overriding the method's choice.

    Raises:
        ValueError: the decoder exposes no level, or a requested level is not one of its levels.
    """
    available = list(getattr(decoder, "level_channels", None) or {})
    name = type(decoder).__name__
    if not available:
        raise ValueError(
            f"The {name} decoder exposes no level a pre-training loss can attach to (empty `level_channels`): DeCon "
            "needs a decoder with named levels (fpn, fcn, unet, deeplabv3plus, xnet)."
        )
    if levels is not None:
        unknown = [level for level in levels if level not in available]
        if unknown:
            raise ValueError(f"ssl.levels {unknown} are not levels of the {name} decoder; its levels: {available}.")
        return list(levels)
    if method == "decon-sl":
        default = getattr(decoder, "default_level", None)
        if default not in available:
            raise ValueError(
                f"The {name} decoder has no valid default_level ({default!r}; levels {available}): set ssl.levels."
            )
        return [default]
    return available


class MomentumPair(NamedTuple):
    """A student module, its EMA teacher copy, and the side of the network (``encoder`` or ``decoder``)."""

    student: nn.Module
    teacher: nn.Module
    side: str


def freeze_unreached(network: EncoderDecoder, levels: Sequence[str], encoder_loss: bool) -> list[str]:
    """Freeze (``requires_grad=False``) the parameters of ``network`` that no loss term can reach.

    Examples: FPN ``fpn_output3..5`` in DeCon-SL (the reference removes them; here they stay, untrained, so the
    checkpoint still fits a downstream FPN), the ×Net decoder's output Re-Shape. Frozen parameters get no gradient,
    so DDP needs no ``find_unused_parameters``. Reachability is read from the autograd graph of one tiny forward
    (zeros, eval mode, no state changed).

    Returns:
        The names of the frozen parameters.
    """
    stride = network.encoder.output_stride
    if network.decoder is not None:
        stride = math.lcm(stride, int(getattr(network.decoder, "input_divisor", 1)))
    side = 2 * stride
    was_training = network.training
    params = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
    network.eval()
    try:
        with torch.enable_grad():
            features, decoded = network(torch.zeros(2, network.encoder.in_chans, side, side))
            outputs = [features[-1]] if encoder_loss else []
            outputs += [decoded.levels[level] for level in levels] if decoded is not None else []
            total = sum(out.float().sum() for out in outputs)
            grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
    finally:
        network.train(was_training)
    frozen = [name for (name, param), grad in zip(params, grads) if grad is None]
    for name, param in params:
        if name in frozen:
            param.requires_grad_(False)
    return frozen


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


# --------------------------------------------------------------------------------------------------------------
# The generic self-supervised module
# --------------------------------------------------------------------------------------------------------------


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
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        step = self.global_step
        if step != self._ema_step:  # once per optimiser step (first micro-batch under gradient accumulation)
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
        trainer_cfg = self.config.trainer
        global_batch = self.config.data.batch_size * world_size(trainer_cfg) * trainer_cfg.accumulate_grad_batches
        optimizer = build_optimizer(self, self.config.optim, global_batch_size=global_batch)
        scheduler = build_scheduler(optimizer, self.config.schedule, total_steps=trainer_cfg.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

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


# --------------------------------------------------------------------------------------------------------------
# SlotCon / DeCon
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


class ImagesOnly(Dataset):
    """A view of an ``(image, label)`` dataset that yields only ``transform(image)``."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        image, _ = self.dataset[index]
        return self.transform(image)


def check_reader_kwargs(reader: type, kwargs: Mapping[str, Any]) -> None:
    """Raise a :class:`ConfigError` if ``data.reader_kwargs`` holds options ``reader``'s constructor does not take."""
    import inspect

    params = inspect.signature(reader.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [name for name, p in params.items() if name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"data.reader_kwargs {unknown} are not options of {reader.__name__} (the reader of this data.dataset); "
            f"its options: {', '.join(valid)}."
        )


def ssl_dataset(config: PretrainDataConfig) -> Dataset:
    """The two-view training set of a self-supervised recipe (items: :class:`predec.data.TwoViewCrop` dicts)."""
    from predec.data import SynthObjects, SynthScenes, TwoViewCrop, UnlabeledFolder

    views = TwoViewCrop(
        size=config.view_size, scale=tuple(config.crop_scale), min_overlap=config.min_overlap, photometric=True
    )
    size = tuple(config.image_size)
    if config.dataset == "synth_scenes":  # SynthScenes checks its render options itself
        return SynthScenes(config.num_train, size=size, seed=config.synth_seed, transform=views, **config.reader_kwargs)
    if config.dataset == "synth_objects":
        check_reader_kwargs(SynthObjects, config.reader_kwargs)
        objects = SynthObjects(config.num_train, size=size, seed=config.synth_seed, **config.reader_kwargs)
        return ImagesOnly(objects, views)
    assert config.root is not None
    check_reader_kwargs(UnlabeledFolder, config.reader_kwargs)
    return UnlabeledFolder(config.root, transform=views, **config.reader_kwargs)


class StepDataModule(L.LightningDataModule):
    """Step-indexed training loader: deterministic in (seed, step) and resumable.

    The sampling of :mod:`predec.engine.datamodule` (``StepBatchSampler`` + ``SeededSamples``): a resumed run sees
    exactly the batches an uninterrupted one would have seen.

    Args:
        train_set: factory of the training set (called in ``setup``).
        batch_size: training images per process.
        seed: run seed.
        max_steps: optimiser steps of the run.
        accumulate_grad_batches: batches per optimiser step.
        num_workers: loader workers.
    """

    def __init__(
        self,
        train_set: Callable[[], Dataset],
        batch_size: int,
        seed: int,
        max_steps: int,
        accumulate_grad_batches: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self._train_factory = train_set
        self.batch_size, self.seed, self.max_steps = batch_size, seed, max_steps
        self.accumulate, self.num_workers = accumulate_grad_batches, num_workers
        self.train_set: Dataset | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self._train_factory()

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        rank, world = self._rank_world()
        trainer = getattr(self, "trainer", None)
        sampler = StepBatchSampler(
            len(self.train_set),  # type: ignore[arg-type]
            self.batch_size,
            self.seed,
            total_batches=self.max_steps * self.accumulate,
            start_batch=trainer.global_step * self.accumulate if trainer is not None else 0,
            rank=rank,
            world_size=world,
        )
        return DataLoader(
            SeededSamples(self.train_set),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=default_collate,
            persistent_workers=self.num_workers > 0,
        )


class EvalStepDataModule(StepDataModule):
    """:class:`StepDataModule` plus an evaluation loader sharded without repetition over the processes.

    Args:
        train_set: factory of the training set.
        val_set: factory of the evaluation set.
        eval_batch_size: evaluation images per process.
        **kwargs: the other :class:`StepDataModule` arguments.
    """

    def __init__(
        self, train_set: Callable[[], Dataset], val_set: Callable[[], Dataset], eval_batch_size: int, **kwargs: Any
    ) -> None:
        super().__init__(train_set, **kwargs)
        self._val_factory, self.eval_batch_size = val_set, eval_batch_size
        self.val_set: Dataset | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._val_factory()

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        rank, world = self._rank_world()
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            sampler=ShardSampler(len(self.val_set), rank, world),  # type: ignore[arg-type]
            num_workers=self.num_workers,
            collate_fn=default_collate,
        )


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    """Outcome of :func:`run_pretraining`: run directory, final step and the ``metrics.json`` record."""

    run_dir: RunDir
    step: int
    metrics: dict[str, Any]


MMAP_THRESHOLD_BYTES = 1 << 20


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold so that freed temporaries above ``threshold`` bytes go back to the OS.

    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed; the 1-32 MiB activations of a
    training step then come from the heap, which fragments, and the resident memory creeps up step after step
    (R50-FPN DeCon-ML on a CPU: peak 5.6, 6.9, 7.0 GiB in the first three steps instead of 5.0, 5.9, 5.9, see
    ``docs/pretraining.md``). A fixed 1 MiB threshold keeps it flat; the price is page faults on fresh
    allocations (there: 20-25 s of kernel time per step instead of 5-6 s). Nothing is changed where
    ``MALLOC_MMAP_THRESHOLD_`` is set (the user's choice) or outside Linux/glibc.

    Returns:
        Whether the threshold was set.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(libc.mallopt(m_mmap_threshold, int(threshold)))


def effective_trainer_config(config: TrainerConfig) -> TrainerConfig:
    """``config`` with ``sync_batchnorm`` kept only under DDP on GPUs (plain BatchNorm elsewhere)."""
    sync = config.sync_batchnorm and uses_cuda(config.accelerator) and world_size(config) > 1
    if config.sync_batchnorm and not sync:
        rank_zero_only(logger.info)("trainer.sync_batchnorm applies to DDP on GPUs only; plain BatchNorm is used.")
    return dataclasses.replace(config, sync_batchnorm=sync)


def build_module(config: PretrainConfig, build_weights: bool = True) -> L.LightningModule:
    """The LightningModule of ``config.method``: :class:`DeConModule` or the supervised classifier."""
    if config.method == "supervised":
        from predec.pretrain.supervised import ClassificationModule

        return ClassificationModule(config, build_weights=build_weights)
    return DeConModule(config, build_weights=build_weights)


def build_datamodule(config: PretrainConfig) -> StepDataModule:
    """The data of ``config.method`` (two-view crops, or classification crops with a held-out split)."""
    data, trainer = config.data, config.trainer
    common = dict(
        batch_size=data.batch_size,
        seed=config.seed,
        max_steps=trainer.max_steps,
        accumulate_grad_batches=trainer.accumulate_grad_batches,
        num_workers=data.num_workers,
    )
    if config.method == "supervised":
        from predec.pretrain.supervised import classification_datasets

        return EvalStepDataModule(
            lambda: classification_datasets(data, train=True),
            val_set=lambda: classification_datasets(data, train=False),
            eval_batch_size=data.eval_batch_size,
            **common,
        )
    return StepDataModule(lambda: ssl_dataset(data), **common)


def run_pretraining(
    config: PretrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> PretrainResult:
    """Pre-train (or resume) as ``config`` says and write the results into the run directory.

    Writes ``config.yaml``, ``status.json``, ``checkpoints/last.ckpt`` (Lightning: student, teacher, heads,
    optimiser, scheduler, RNG), ``logs/`` (TensorBoard + CSV), ``metrics.json`` and the weights: SSL methods
    ``weights.safetensors`` (``student.*`` / ``teacher.*`` encoder and decoder, a weight source for
    ``create_model``), ``supervised`` ``classifier.safetensors`` (timm layout) with the held-out top-1 accuracy.
    An interrupted run directory is resumed automatically (same config apart from :data:`RUNTIME_KEYS`).

    Raises:
        NonFiniteLossError: the loss or a gradient became NaN/Inf (status ``failed``; the last checkpoint is kept).
        RunExistsError: the run directory holds a finished run and ``overwrite`` is False.
        ConfigError / ValueError: contradictory settings, a decoder without usable levels, a foreign checkpoint.
    """
    from predec.engine.runner import _resolve_resume, end_run

    check_pretrain_config(config)
    pin_mmap_threshold()
    run = RunDir(run_dir or Path(config.output_dir) / config.name)
    ckpt_path = _resolve_resume(run, resume, overwrite)
    if ckpt_path is not None and ckpt_path.parent == run.checkpoints:
        run.check_same_config(config, ignore=RUNTIME_KEYS)
    if rank_zero_only.rank == 0:
        run.save_config(config)
        run.set_status(RUNNING, resumed_from=str(ckpt_path) if ckpt_path else None)
    L.seed_everything(config.seed, workers=True, verbose=False)
    trainer = None
    try:
        module = build_module(config, build_weights=ckpt_path is None)
        datamodule = build_datamodule(config)
        trainer = build_trainer(
            effective_trainer_config(config.trainer),
            run,
            callbacks=callbacks,
            grad_clip_norm=config.optim.grad_clip_norm,
            csv_version=f"resumed_{ckpt_path.stem}" if ckpt_path else "",
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"Pre-training interrupted at step {trainer.global_step}.")
        saved_step = getattr(trainer.checkpoint_callback, "_last_global_step_saved", -1)
        if saved_step != trainer.global_step or not run.last_checkpoint.is_file():
            trainer.save_checkpoint(run.last_checkpoint)
        if config.method == "supervised":
            trainer.validate(module, datamodule=datamodule, verbose=False)
    except BaseException as err:
        end_run(run, err, trainer, None)
        raise
    metrics: dict[str, Any] = {"method": config.method, "step": trainer.global_step}
    metrics["checkpoint"] = str(run.last_checkpoint)
    if trainer.is_global_zero:
        if config.method == "supervised":
            metrics.update(module.write_outputs(run.root))  # type: ignore[operator]
        else:
            weights = run.root / WEIGHTS_FILE
            save_safetensors(module.pretrained_state_dict(), weights)  # type: ignore[operator]
            metrics.update(module.loss_summary())  # type: ignore[operator]
            metrics["weights"] = str(weights)
            metrics["levels"] = ["encoder"] * (module.alpha > 0) + list(module.levels)  # type: ignore[operator]
        run.write_metrics(metrics)
        run.set_status(FINISHED, step=trainer.global_step)
    return PretrainResult(run, trainer.global_step, metrics)


def save_safetensors(state: Mapping[str, Tensor], path: Path) -> None:
    """Write ``state`` as safetensors atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    safetensors.torch.save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    tmp.replace(path)

"""The recipe schema of ``predec pretrain``: :class:`PretrainConfig` and its checks.

``method``: ``supervised`` (classification), ``slotcon`` (encoder), ``decon-sl`` / ``decon-ml`` (encoder and decoder),
built from the same parts as the dense recipes (:mod:`predec.config`: optimiser, schedule, trainer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from predec.config import ConfigError, OptimConfig, ScheduleConfig, TrainerConfig
from predec.optim import check_schedule

METHODS: tuple[str, ...] = ("supervised", "slotcon", "decon-sl", "decon-ml")
SSL_METHODS: tuple[str, ...] = ("slotcon", "decon-sl", "decon-ml")


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
    trainer = config.trainer
    selection = {"trainer.monitor": trainer.monitor, "trainer.patience": trainer.patience}
    if config.schedule.name == "plateau":
        selection["schedule.name"] = "plateau"
    chosen = {key: value for key, value in selection.items() if value is not None}
    if chosen:
        raise ConfigError(
            f"{', '.join(f'{k}={v}' for k, v in chosen.items())}: model selection on a validation metric is for "
            "predec train (dense runs); pre-training runs to trainer.max_steps (use schedule.name=cosine or poly)."
        )

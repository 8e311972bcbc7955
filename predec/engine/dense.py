"""The LightningModule of dense training and evaluation (depth, segmentation).

It wires the pieces and owns none of them: the model comes from :func:`predec.create_model` (``config.model``), the
losses, metric accumulators and test-time inference from :mod:`predec.tasks`, the optimiser and schedule from
:mod:`predec.optim`. Metric states are SUM-reduced across processes at the end of each evaluation, so DDP
evaluation gives the single-process numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from predec.config import ConfigError, DenseConfig, ModelConfig, from_dict, to_dict
from predec.engine.guards import check_finite_loss
from predec.engine.trainer import step_optimizers
from predec.models.base import head_options, recorded_options

MODEL_IDENTITY_KEYS: tuple[str, ...] = (
    "arch",
    "encoder",
    "decoder",
    "task",
    "num_classes",
    "in_chans",
    "encoder_kwargs",
    "decoder_kwargs",
    "head_kwargs",
    "max_depth",
    "min_depth",
)
"""Model settings that define the architecture (and so the checkpoint keys and shapes), and the depth head's range
(it scales the output: a depth checkpoint run with another range predicts other depths)."""
VAL_HISTORY_KEY = "predec_val_history"
"""Checkpoint entry holding :attr:`DenseModule.val_history`."""


def build_model(config: ModelConfig) -> torch.nn.Module:
    """``predec.create_model`` with the settings of ``config`` (weights resolved from the weight specs)."""
    from predec import create_model

    settings = to_dict(config)  # ModelConfig's fields are create_model's arguments, decoder options spread
    decoder_kwargs = settings.pop("decoder_kwargs")
    settings.update(encoder_kwargs=settings["encoder_kwargs"] or None, head_kwargs=settings["head_kwargs"] or None)
    return create_model(**settings, **decoder_kwargs)


def architecture_mismatch(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``key: saved → wanted`` lines for the architecture-defining model settings that differ.

    Defaults that saved configs record are filled in on both sides (×Net's ``reshape``, the head options of
    :func:`predec.models.base.head_options`), so a recipe that leaves them out equals a saved config that recorded
    them; head options are named resolved (what each side builds).
    """

    def identity(config: Mapping[str, Any], key: str) -> Any:
        value = config.get(key) or None  # None, {} and 0-less defaults compare equal
        if key in ("max_depth", "min_depth"):
            return float(value or 0.0) if config.get("task") == "depth" else None
        if key in ("encoder", "decoder") and isinstance(value, str):
            return value.split(".", 1)[0]  # a pretrained tag does not change the architecture
        if key == "decoder_kwargs":
            return recorded_options(config.get("arch"), value) or None  # saved configs record shape defaults
        if key == "head_kwargs":
            return head_options(config.get("arch"), value if isinstance(value, Mapping) else None, strict=False)
        return value

    def line(key: str) -> str:
        if key == "head_kwargs":  # named resolved, with the override that builds the checkpoint's head
            head = identity(saved, key)
            return (
                f"model.head_kwargs: {head!r} in the checkpoint, {identity(wanted, key)!r} in the config (its head "
                f"needs model.head_kwargs={head_override(head)} in the recipe)"
            )
        return f"model.{key}: {saved.get(key)!r} in the checkpoint, {wanted.get(key)!r} in the config"

    return [line(key) for key in MODEL_IDENTITY_KEYS if identity(saved, key) != identity(wanted, key)]


def head_override(options: Mapping[str, Any]) -> str:
    """The ``model.head_kwargs`` override value (YAML flow) that builds the head of resolved ``options``:
    ``{convs: 0}`` or ``{convs: 2, channels: 128}``."""
    convs, channels = options.get("convs", 0), options.get("channels")
    if not convs:
        return "{convs: 0}"
    return f"{{convs: {convs}, channels: {'null' if channels is None else channels}}}"


class DenseModule(L.LightningModule):
    """Training / evaluation of a dense model.

    Args:
        config: the recipe (:class:`DenseConfig` or its plain dict, as stored in checkpoints).
        build_weights: resolve ``encoder_weights``/``decoder_weights`` (False when a checkpoint will overwrite them).

    Attributes:
        model: the ``DenseModel``.
        last_metrics: metrics of the latest evaluation (``{}`` before any).
        last_metrics_step: the global step they were computed at.
        val_history: ``{step: {name: value}}``, the scalar metrics of every validation of the run (saved in its
            checkpoints, so a resumed run keeps the curve that selects its best step).
    """

    def __init__(self, config: DenseConfig | Mapping[str, Any], build_weights: bool = True) -> None:
        super().__init__()
        self.config: DenseConfig = config if isinstance(config, DenseConfig) else from_dict(DenseConfig, config)
        recipe = to_dict(self.config)  # checkpoints record the head it builds, not "the defaults" (they may change)
        recipe["model"]["head_kwargs"] = head_options(recipe["model"]["arch"], recipe["model"]["head_kwargs"])
        self.save_hyperparameters({"config": recipe})
        model_config = self.config.model
        if not build_weights:
            model_config = ModelConfig(**{**to_dict(model_config), "encoder_weights": None, "decoder_weights": None})
        self.model = build_model(model_config)
        if self.config.trainer.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task = self.config.model.task
        self.last_metrics: dict[str, Any] = {}
        self.last_metrics_step = -1
        self.val_history: dict[int, dict[str, float]] = {}
        self._accumulator: Any = None

    # ---------------------------------------------------------------------------------------------------- forward
    def forward(self, images: Tensor) -> Tensor:
        """Model outputs (depth (B,1,H,W) metres or logits (B,C,H,W)) of normalised images (B,3,H,W)."""
        return self.model(self._to_memory_format(images))

    def _to_memory_format(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.config.trainer.channels_last else images

    def loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The task loss of a batch and its named terms."""
        cfg = self.config.loss
        if self.task == "depth":
            loss = _tasks().depth.silog_loss(
                outputs, batch["depth"], variant=cfg.silog_variant, lambd=cfg.silog_lambda, scale=cfg.silog_scale
            )
            return loss, {"silog": loss.detach()}
        loss = _tasks().segmentation.cross_entropy_loss(
            outputs, batch["labels"], ignore_index=cfg.ignore_index, class_weights=cfg.class_weights
        )
        return loss, {"ce": loss.detach()}

    # --------------------------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Refuse depth readers whose depths do not fit the model's range (a wrong unit) before the first step of a
        fit or an evaluation (:meth:`predec.data.datasets.DepthSplitDataset.check_depth_unit`)."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        sets = [getattr(datamodule, name, None) for name in ("train_set", "val_set", "test_set")]
        model_cfg = self.config.model
        for dataset in {id(d): d for d in sets if self.task == "depth" and hasattr(d, "check_depth_unit")}.values():
            dataset.check_depth_unit(model_cfg.min_depth, model_cfg.max_depth)

    def check_depth_targets(self, batch: dict[str, Any]) -> None:
        """Refuse a batch holding a sample whose depth targets lie mostly outside the model's (min_depth, max_depth]:
        a wrong unit (:func:`predec.data.io.check_depth_range` names the file and the fix). Two reductions per sample.
        """
        depth = batch.get("depth") if self.task == "depth" else None
        if depth is None:
            return
        model_cfg = self.config.model
        valid = torch.isfinite(depth) & (depth > 0)
        outside = valid & ((depth <= model_cfg.min_depth) | (depth > model_cfg.max_depth))
        bad = outside.flatten(1).sum(1) * 2 > valid.flatten(1).sum(1)
        if not bool(bad.any()):
            return
        from predec.data.io import check_depth_range

        index = int(bad.nonzero()[0, 0])
        meta = (batch.get("meta") or [{}] * len(depth))[index]
        where = meta.get("depth_path") or meta.get("path") or f"sample {meta.get('index', index)}"
        values = depth[index].detach().float().cpu().numpy()
        check_depth_range(values, model_cfg.min_depth, model_cfg.max_depth, where, meta.get("depth_scale"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.check_depth_targets(batch)
        outputs = self(batch["image"])
        loss, terms = self.loss(outputs, batch)
        check_finite_loss(loss, self.global_step, terms, trainer=self.trainer)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            if len(terms) > 1:
                self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.config
        return step_optimizers(
            self.model,
            config.optim,
            config.schedule,
            config.trainer,
            config.data.batch_size,
            self.pretrained_prefixes(),
        )

    def pretrained_prefixes(self) -> list[str]:
        """Parameter-name prefixes of the parts the recipe starts from pre-trained weights (decided by the recipe,
        so a resumed run builds the same optimiser groups): ``encoder.`` if ``model.encoder_weights`` is set; if
        ``model.decoder_weights`` is set, ``decoder.backbone.`` for a decoder built around a backbone (×Net), else
        ``decoder.``."""
        model_cfg = self.config.model
        prefixes = ["encoder."] if model_cfg.encoder_weights else []
        if model_cfg.decoder_weights:
            prefixes.append("decoder.backbone." if hasattr(self.model.decoder, "backbone") else "decoder.")
        return prefixes

    # ------------------------------------------------------------------------------------------------- evaluation
    def inference(self, images: Tensor) -> Tensor:
        """Test-time prediction of ``config.eval``: resize, whole/slide windows, scales, flip.

        Returns:
            depth (B,1,H,W) metres, or segmentation class scores (B,C,H,W) (logits, or averaged probabilities with
            several scales / flip), at the input size.
        """
        tasks = _tasks()
        cfg = self.config.eval
        height, width = images.shape[-2:]
        x = images
        if cfg.resize is not None and tuple(cfg.resize) != (height, width):
            x = F.interpolate(x, size=tuple(cfg.resize), mode="bilinear", align_corners=False)

        def predict(inputs: Tensor) -> Tensor:
            return self.model.predict(self._to_memory_format(inputs))

        def one_scale(inputs: Tensor) -> Tensor:
            if cfg.mode == "slide":
                if cfg.crop_size is None or cfg.stride is None:
                    raise ValueError("eval.mode='slide' needs eval.crop_size and eval.stride, e.g. [512, 512].")
                return tasks.inference.slide_inference(predict, inputs, crop=cfg.crop_size, stride=cfg.stride)
            return tasks.inference.whole_inference(predict, inputs)

        if self.task == "segmentation" and (cfg.flip or list(cfg.scales) != [1.0]):
            out = tasks.inference.multiscale_flip_inference(
                predict, x, scales=cfg.scales, flip=cfg.flip, mode=cfg.mode, crop=cfg.crop_size, stride=cfg.stride
            )
        elif self.task == "depth":
            if list(cfg.scales) != [1.0]:
                raise ValueError(f"eval.scales={cfg.scales}: multi-scale testing is for segmentation; use [1.0].")
            out = tasks.depth.flip_average(one_scale, x) if cfg.flip else one_scale(x)
        else:
            out = one_scale(x)
        if out.shape[-2:] != (height, width):
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        return out

    def _new_accumulator(self) -> Any:
        tasks = _tasks()
        if self.task == "depth":
            cfg = self.config.eval
            crop = None if cfg.depth_crop == "none" else cfg.depth_crop
            max_depth = cfg.max_depth if cfg.max_depth is not None else self.config.model.max_depth
            return tasks.depth.DepthMetricAccumulator(min_depth=cfg.min_depth, max_depth=max_depth, crop=crop)
        assert self.config.model.num_classes is not None
        return tasks.segmentation.SegMetricAccumulator(
            self.config.model.num_classes, ignore_index=self.config.loss.ignore_index
        )

    def on_validation_epoch_start(self) -> None:
        self._accumulator = self._new_accumulator()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.check_depth_targets(batch)
        outputs = self.inference(batch["image"])
        target = batch["depth"] if self.task == "depth" else batch["labels"]
        if outputs.shape[-2:] != target.shape[-2:]:
            outputs = F.interpolate(outputs, size=target.shape[-2:], mode="bilinear", align_corners=False)
        self._accumulator.update(outputs, target)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, prefix: str) -> None:
        """Reduce the metric states over processes, keep the metrics (``last_metrics``) and log them as
        ``<prefix>/<name>``."""
        state = self._accumulator.state()
        if self.trainer.world_size > 1:
            state = {k: self.trainer.strategy.reduce(v.to(self.device), reduce_op="sum") for k, v in state.items()}
            self._accumulator.load_state(state)
        metrics = self._accumulator.compute()
        self.last_metrics = _plain(metrics)
        self.last_metrics_step = self.global_step
        scalars = {f"{prefix}/{k}": float(v) for k, v in self.last_metrics.items() if isinstance(v, (int, float))}
        if prefix == "val" and not self.trainer.sanity_checking:
            self.val_history[self.global_step] = {k: float(v) for k, v in scalars.items()}
        if not self.trainer.sanity_checking:
            # Already reduced over processes: every rank logs the same values (early stopping reads them on each
            # rank), with no further sync.
            self.log_dict(scalars, prog_bar=False, sync_dist=False)

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[VAL_HISTORY_KEY] = {str(step): metrics for step, metrics in self.val_history.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(VAL_HISTORY_KEY) or {}
        self.val_history = {int(step): dict(metrics) for step, metrics in saved.items()}


def monitored_metric(config: DenseConfig) -> tuple[str, str] | None:
    """The validation metric that selects a run's final weights, and whether it is better higher or lower.

    Returns:
        ``("val/<metric>", "max" | "min")``, or None when ``trainer.monitor`` is not set.

    Raises:
        ConfigError: an unknown metric, a monitor without ``val_every_n_steps``, or ``patience`` or a ``plateau``
            schedule without a monitor.
    """
    trainer = config.trainer
    if trainer.monitor is None:
        if config.schedule.name == "plateau":
            raise ConfigError(
                "schedule.name=plateau needs trainer.monitor (e.g. trainer.monitor=auto) and "
                "trainer.val_every_n_steps: it lowers the learning rate when that validation metric stops improving."
            )
        if trainer.patience is not None:
            raise ConfigError(
                f"trainer.patience={trainer.patience} needs trainer.monitor (e.g. trainer.monitor=auto): early "
                "stopping watches a validation metric."
            )
        return None
    tasks = _tasks()
    goals, main = (
        (tasks.depth.DEPTH_METRIC_GOALS, tasks.depth.DEPTH_MAIN_METRIC)
        if config.model.task == "depth"
        else (tasks.segmentation.SEG_METRIC_GOALS, tasks.segmentation.SEG_MAIN_METRIC)
    )
    name = main if trainer.monitor == "auto" else trainer.monitor.removeprefix("val/")
    if name not in goals:
        valid = ", ".join(["auto", *(f"val/{n}" for n in goals)])
        raise ConfigError(
            f"trainer.monitor={trainer.monitor!r} is not a {config.model.task} validation metric; valid: {valid}."
        )
    if not trainer.val_every_n_steps:
        raise ConfigError(
            f"trainer.monitor={trainer.monitor!r} needs trainer.val_every_n_steps (how often to validate, e.g. 100)."
        )
    if trainer.patience is not None and trainer.patience < 1:
        raise ConfigError(f"trainer.patience={trainer.patience}: give a number of validations >= 1, or null.")
    return f"val/{name}", goals[name]


def _tasks() -> Any:
    """The ``predec.tasks`` package (imported on first use)."""
    import predec.tasks.depth
    import predec.tasks.inference
    import predec.tasks.segmentation

    return predec.tasks


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value

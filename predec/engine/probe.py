"""Frozen-feature linear probe: what pre-training put into a dense network, measured without fine-tuning it.

The encoder AND the decoder stay frozen; only a 1×1 convolution on the decoder's output (``DecoderOutput.out``) is
trained, to convergence, on cached features, and scored on held-out images with predec's own metrics:

- :func:`decoder_features`: ``model.decoder(model.encoder(x), x).out`` in eval mode under ``torch.inference_mode``.
- :class:`LinearProbe`: the 1×1 map C → K (segmentation logits) or C → 1 (depth, DepthHead's sigmoid range).
- :func:`fit_probe` / :func:`evaluate_probe`: AdamW with cosine decay on the features; mIoU / AbsRel.
- :func:`probe_model`: both, with a check that the model's state dict is bit-identical afterwards.
- :func:`synth_probe_data`: SynthScenes as stacked tensors.

Functions on tensors: nothing here knows about Lightning or the demo. Everything runs on the device of the tensors
given (features on the CPU by default).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from predec.data.synthetic import SynthScenes
from predec.data.transforms import eval_transform
from predec.tasks.depth import DepthMetricAccumulator, silog_loss, valid_depth_mask
from predec.tasks.segmentation import IGNORE_INDEX, SegMetricAccumulator, check_labels, cross_entropy_loss

PROBE_TASKS: tuple[str, ...] = ("depth", "segmentation")
CONVERGENCE_WINDOW = 0.1
"""Fraction of the epochs whose mean loss is compared with the window before it (``fit_probe``'s record)."""
CONVERGENCE_TOLERANCE = 0.01
"""Relative change of that mean below which a fit counts as converged."""
_LOSS_MIN_DEPTH = 1e-3  # silog_loss's default lower bound of valid ground truth: the pixels the depth loss sees
_INIT_STD = 1e-3  # standard deviation of the probe's initial weights (the bias carries the initial prediction)


def _check_task(task: str, num_classes: int | None) -> None:
    if task not in PROBE_TASKS:
        raise ValueError(f"Unknown probe task {task!r}; valid: {', '.join(PROBE_TASKS)}.")
    if task == "segmentation" and (num_classes is None or int(num_classes) < 1):
        raise ValueError(f"task='segmentation' needs num_classes >= 1 (the number of classes); got {num_classes}.")
    if task == "depth" and num_classes is not None:
        raise ValueError(f"num_classes={num_classes} is for task='segmentation'; a depth probe predicts one map.")


def _check_features(features: Tensor, name: str = "features") -> None:
    if not isinstance(features, Tensor) or features.dim() != 4 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        dtype = f", dtype {features.dtype}" if isinstance(features, Tensor) else ""
        raise ValueError(f"{name} must be floating-point decoder features (N, C, h, w); got {shape}{dtype}.")
    if features.shape[0] == 0:
        raise ValueError(f"{name} hold no sample (N = 0); a probe needs at least one image.")


def _check_targets(targets: Tensor, task: str, num_samples: int, num_classes: int | None) -> None:
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a tensor; got {type(targets).__name__}.")
    if task == "segmentation":
        if targets.dim() != 3:
            raise ValueError(f"Segmentation targets must be labels (N, H, W) int64; got shape {tuple(targets.shape)}.")
        check_labels(targets, int(num_classes or 0), IGNORE_INDEX, name="targets")
    elif targets.dim() != 4 or targets.shape[1] != 1 or not targets.is_floating_point():
        raise ValueError(
            f"Depth targets must be metres (N, 1, H, W) float (0 = invalid); got shape {tuple(targets.shape)}, "
            f"dtype {targets.dtype}."
        )
    if targets.shape[0] != num_samples:
        raise ValueError(
            f"features and targets hold different numbers of samples: {num_samples} vs {targets.shape[0]}."
        )


def decoder_features(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    """The decoder's output features of a dense model, without changing the model.

    Runs ``model.decoder(model.encoder(x), x).out`` in eval mode under ``torch.inference_mode()`` (no autograd
    graph, no norm-statistics update), in batches on the model's device. Every submodule's train/eval flag is
    restored afterwards, exactly as it was.

    Args:
        model: a ``DenseModel`` (or any module with ``.encoder`` and ``.decoder`` on that contract).
        images: normalised images (N, 3, H, W); H and W multiples of ``model.output_stride`` where the model has one.
        batch_size: images per forward pass.

    Returns:
        Features (N, C, h, w), float32, on the CPU (a normal tensor, usable with autograd).
    """
    if not (hasattr(model, "encoder") and hasattr(model, "decoder")):
        raise TypeError(
            f"decoder_features needs a dense model with .encoder and .decoder (a predec DenseModel); got "
            f"{type(model).__name__}."
        )
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be normalised images (N, 3, H, W); got {shape}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    stride = getattr(model, "output_stride", None)
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if isinstance(stride, int) and (height % stride or width % stride):
        raise ValueError(
            f"Image size {height}×{width} is not divisible by the model's output stride {stride}: resize or crop the "
            f"images to multiples of {stride} (e.g. {height // stride * stride}×{width // stride * stride})."
        )
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else images.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = [(module, module.training) for module in model.modules()]
    chunks: list[Tensor] = []
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device=device, dtype=dtype)
                chunks.append(model.decoder(model.encoder(x), x).out.float().cpu())
    finally:
        for module, training in modes:
            module.training = training
    if not chunks:
        raise ValueError("images hold no sample (N = 0).")
    return torch.cat(chunks)  # outside inference mode: a normal tensor


class LinearProbe(nn.Module):
    """A 1×1 convolution C → K on frozen decoder features, resized bilinearly to the target size.

    The features are first standardised per channel with the training features' mean and std
    (:meth:`set_standardization`; identity until set), as MAE's linear probe puts a BatchNorm without affine before
    its classifier: an affine map of the input, so the probe's function class is unchanged, but the fit converges in
    a few epochs whatever the features' scale.

    Segmentation: logits ``resize(conv1x1(x))``. Depth: ``sigmoid(resize(conv1x1(x))) * (max - min) + min``, the
    resize before the sigmoid as in predec's ``DepthHead``.

    Args:
        in_channels: C, channels of the decoder features.
        task: ``"segmentation"`` or ``"depth"``.
        num_classes: K (segmentation only, required there).
        max_depth: largest predictable depth in metres (depth only).
        min_depth: smallest predictable depth in metres, ``0 <= min_depth < max_depth`` (depth only).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        task: str,
        num_classes: int | None = None,
        max_depth: float = 10.0,
        min_depth: float = 0.0,
    ) -> None:
        super().__init__()
        _check_task(task, num_classes)
        if task == "depth" and not 0.0 <= min_depth < max_depth:
            raise ValueError(f"A depth probe needs 0 <= min_depth < max_depth; got {min_depth=}, {max_depth=}.")
        self.task = task
        self.num_classes = int(num_classes) if num_classes is not None else None
        self.max_depth = float(max_depth)
        self.min_depth = float(min_depth)
        self.conv = nn.Conv2d(int(in_channels), self.num_classes or 1, kernel_size=1)
        self.register_buffer("feature_mean", torch.zeros(1, int(in_channels), 1, 1))
        self.register_buffer("feature_std", torch.ones(1, int(in_channels), 1, 1))

    @torch.no_grad()
    def set_standardization(self, features: Tensor) -> None:
        """Standardise inputs with the per-channel mean and std of ``features`` (N, C, h, w), e.g. the training set
        (a constant channel keeps std 1)."""
        mean = features.float().mean(dim=(0, 2, 3), keepdim=True)
        std = (features.float() - mean).square().mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Args:
            features: decoder features (B, C, h, w).
            size: output (H, W); None keeps (h, w).

        Returns:
            Segmentation logits (B, K, H, W), or depth in metres (B, 1, H, W).
        """
        z = self.conv((features - self.feature_mean) / self.feature_std)
        if size is not None and tuple(z.shape[-2:]) != tuple(size):
            z = F.interpolate(z, size=tuple(size), mode="bilinear", align_corners=False)
        if self.task == "depth":
            return torch.sigmoid(z) * (self.max_depth - self.min_depth) + self.min_depth
        return z

    def extra_repr(self) -> str:
        if self.task == "depth":
            return f"task=depth, min_depth={self.min_depth}, max_depth={self.max_depth}"
        return f"task=segmentation, num_classes={self.num_classes}"


def _probe_loss(probe: LinearProbe, features: Tensor, targets: Tensor) -> Tensor:
    out = probe(features, size=tuple(targets.shape[-2:]))
    if probe.task == "depth":
        return silog_loss(out, targets, variant="adabins", lambd=0.0, scale=10.0)
    return cross_entropy_loss(out, targets, ignore_index=IGNORE_INDEX)


def _init_probe(probe: LinearProbe, targets: Tensor, generator: torch.Generator) -> None:
    """Small random weights (from ``generator``); depth: the bias makes the first prediction the median valid depth."""
    with torch.no_grad():
        weight = torch.randn(probe.conv.weight.shape, generator=generator) * _INIT_STD
        probe.conv.weight.copy_(weight)
        probe.conv.bias.zero_()
        if probe.task != "depth":
            return
        valid = targets[valid_depth_mask(targets, _LOSS_MIN_DEPTH)]
        if valid.numel() == 0:
            raise ValueError(
                f"Depth targets hold no valid pixel (> {_LOSS_MIN_DEPTH} m): check the depth scale (metres, "
                "0 = invalid)."
            )
        median = float(valid.float().median())
        span = probe.max_depth - probe.min_depth
        fraction = min(max((median - probe.min_depth) / span, 1e-4), 1.0 - 1e-4)
        probe.conv.bias.fill_(math.log(fraction / (1.0 - fraction)))


def _convergence(curve: list[float]) -> tuple[bool, float]:
    """Whether the mean loss of the last ``CONVERGENCE_WINDOW`` of epochs moved by < ``CONVERGENCE_TOLERANCE``
    relative to the window before it, and that relative change (NaN with fewer than 2 epochs)."""
    window = max(1, round(CONVERGENCE_WINDOW * len(curve)))
    if len(curve) < 2 * window:
        return False, math.nan
    last = sum(curve[-window:]) / window
    before = sum(curve[-2 * window : -window]) / window
    change = abs(last - before) / max(abs(before), 1e-12)
    return change < CONVERGENCE_TOLERANCE, change


def fit_probe(
    train_features: Tensor,
    train_targets: Tensor,
    *,
    task: str,
    num_classes: int | None = None,
    max_depth: float = 10.0,
    min_depth: float = 0.0,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> tuple[LinearProbe, dict[str, Any]]:
    """Train a :class:`LinearProbe` on cached features for a fixed number of epochs (no early stop).

    AdamW, learning rate ``lr`` decayed by a cosine to 0 over all steps; mini-batches of ``batch_size`` samples
    (the last one smaller) shuffled each epoch by a ``torch.Generator`` seeded with ``seed``, which also draws the
    initial weights (N(0, 1e-3²)): the same inputs and seed give a bit-identical probe on the same machine and
    thread count. Losses: segmentation, predec's ``cross_entropy_loss`` (ignore 255) on the logits resized to the
    label size; depth, predec's ``silog_loss`` with ``lambd=0`` (adabins variant, scale 10: the RMS log error) on the
    prediction resized to the target size, the bias initialised so that the first prediction is the median valid
    training depth. Runs on the device of ``train_features``.

    Args:
        train_features: decoder features (N, C, h, w), floating point.
        train_targets: segmentation labels (N, H, W) int64 (255 = ignore), or depth (N, 1, H, W) metres (0 = invalid).
        task: ``"segmentation"`` or ``"depth"``.
        num_classes: K (segmentation only, required there).
        max_depth: largest predictable depth in metres (depth only).
        min_depth: smallest predictable depth in metres (depth only).
        epochs: passes over the training features.
        batch_size: samples per step.
        lr: peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        seed: seed of the initial weights and the shuffling.

    Returns:
        The trained probe (eval mode) and a record: ``epochs``, ``steps``, ``loss_curve`` ([(epoch, mean training
        loss)], epochs from 1), ``final_loss`` (the last epoch's), ``relative_change_last_10pct`` (relative change of
        the mean loss of the last 10 % of epochs from the 10 % before; NaN under 2 epochs) and ``converged``
        (that change < 1 %). A rough sign only: the cosine decay makes the last epochs take small steps, so a fit
        still far from its optimum can pass, and a loss falling towards 0 can fail (a large relative change of a tiny
        loss); read the curve, or compare with a longer fit, when in doubt.
    """
    _check_task(task, num_classes)
    _check_features(train_features, "train_features")
    num = int(train_features.shape[0])
    _check_targets(train_targets, task, num, num_classes)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1; got epochs={epochs}, batch_size={batch_size}.")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"lr must be > 0 and weight_decay >= 0; got lr={lr}, weight_decay={weight_decay}.")
    device = train_features.device
    generator = torch.Generator().manual_seed(int(seed))
    probe = LinearProbe(
        train_features.shape[1], task=task, num_classes=num_classes, max_depth=max_depth, min_depth=min_depth
    )
    probe.set_standardization(train_features)
    _init_probe(probe, train_targets, generator)
    probe = probe.to(device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-num // batch_size)
    total = epochs * steps_per_epoch
    curve: list[tuple[int, float]] = []
    step = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(num, generator=generator)
        loss_sum = 0.0
        for start in range(0, num, batch_size):
            index = order[start : start + batch_size]
            features = train_features[index.to(train_features.device)].float()
            targets = train_targets[index.to(train_targets.device)].to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = _probe_loss(probe, features, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            step += 1
        curve.append((epoch, loss_sum / num))
    converged, change = _convergence([loss for _, loss in curve])
    record = {
        "epochs": int(epochs),
        "steps": step,
        "loss_curve": curve,
        "final_loss": curve[-1][1],
        "converged": converged,
        "relative_change_last_10pct": change,
    }
    return probe.eval(), record


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, int):  # bools and counts stay as they are
        return value
    return float(value)


def evaluate_probe(
    probe: LinearProbe,
    features: Tensor,
    targets: Tensor,
    *,
    task: str,
    num_classes: int | None = None,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score a probe with predec's accumulators, the prediction resized to the target size.

    Args:
        probe: a trained :class:`LinearProbe` of ``task``.
        features: decoder features (N, C, h, w).
        targets: segmentation labels (N, H, W) int64 (255 = ignore), or depth (N, 1, H, W) metres (0 = invalid).
        task: ``"segmentation"`` or ``"depth"`` (must be the probe's).
        num_classes: K (segmentation; None = the probe's).
        min_depth: exclusive lower bound of evaluated ground truth, > 0 (depth only; NYU/KITTI protocol 1e-3).
        max_depth: exclusive upper bound of evaluated ground truth (depth only).
        batch_size: samples per forward pass.

    Returns:
        Plain Python values. Segmentation: ``SegMetricAccumulator.compute()`` (mIoU, aAcc, mAcc, per-class IoU and
        Acc lists); depth: ``DepthMetricAccumulator.compute()`` (d1..d3, abs_rel, sq_rel, rmse, rmse_log, log10,
        silog, num_images, num_skipped).
    """
    if task != probe.task:
        raise ValueError(f"task={task!r} but the probe was trained for {probe.task!r}; pass task={probe.task!r}.")
    if task == "segmentation":
        if num_classes is None:
            num_classes = probe.num_classes
        if num_classes != probe.num_classes:
            raise ValueError(f"num_classes={num_classes} but the probe predicts {probe.num_classes} classes.")
    _check_task(task, num_classes)
    _check_features(features)
    if features.shape[1] != probe.conv.in_channels:
        raise ValueError(
            f"features have {features.shape[1]} channels; the probe was trained on {probe.conv.in_channels}."
        )
    _check_targets(targets, task, int(features.shape[0]), num_classes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    accumulator: SegMetricAccumulator | DepthMetricAccumulator
    if task == "segmentation":
        accumulator = SegMetricAccumulator(int(num_classes or 0), ignore_index=IGNORE_INDEX)
    else:
        accumulator = DepthMetricAccumulator(min_depth=min_depth, max_depth=max_depth)
    device = next(probe.parameters()).device
    was_training = probe.training
    probe.eval()
    try:
        with torch.inference_mode():
            for start in range(0, features.shape[0], batch_size):
                x = features[start : start + batch_size].to(device).float()
                y = targets[start : start + batch_size].to(device)
                accumulator.update(probe(x, size=tuple(y.shape[-2:])), y)
    finally:
        probe.train(was_training)
    return {name: _plain(value) for name, value in accumulator.compute().items()}


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Bit-for-bit equality (NaNs included), dtype and shape first."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))


def _check_unchanged(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    if set(after) != set(before):
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        raise RuntimeError(
            f"The model's state dict changed during probing: entries added {added}, removed {removed}. A probe must "
            "leave the frozen model untouched."
        )
    changed = [name for name, tensor in after.items() if not _same_bits(tensor.detach(), before[name])]
    if changed:
        raise RuntimeError(
            f"The model's tensor(s) {changed} changed during probing (parameters or buffers, e.g. BatchNorm running "
            "statistics); a probe must leave the frozen model bit-identical: run it in eval mode without updates."
        )


def probe_model(
    model: nn.Module,
    train_images: Tensor,
    train_targets: Tensor,
    test_images: Tensor,
    test_targets: Tensor,
    *,
    task: str,
    num_classes: int | None = None,
    max_depth: float = 10.0,
    min_depth: float = 0.0,
    seed: int = 0,
    epochs: int = 100,
    eval_min_depth: float = 1e-3,
    feature_batch_size: int = 32,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Linear probe of a frozen dense model: decoder features once per split, :func:`fit_probe`, evaluation.

    The model's state dict (parameters and buffers) is copied first and compared bit for bit afterwards.

    Args:
        model: a ``DenseModel`` (any architecture); it is not modified.
        train_images: normalised training images (N, 3, H, W).
        train_targets: labels (N, H, W) int64 or depth (N, 1, H, W) metres, of the training images.
        test_images: normalised held-out images (M, 3, H', W').
        test_targets: their labels (M, H', W') or depth (M, 1, H', W').
        task: ``"segmentation"`` or ``"depth"``.
        num_classes: K (segmentation only, required there).
        max_depth: the depth probe's upper bound and the evaluation's (metres).
        min_depth: the depth probe's lower bound (metres).
        seed: seed of the fit.
        epochs: epochs of the fit.
        eval_min_depth: exclusive lower bound of evaluated ground truth (depth; > 0).
        feature_batch_size: images per forward pass of the model.
        **fit_kwargs: further options of :func:`fit_probe` (``batch_size``, ``lr``, ``weight_decay``).

    Returns:
        ``{"metrics": test metrics, "train_metrics": metrics on the training features, "fit": the fit record,
        "feature_shape": [C, h, w]}``.

    Raises:
        RuntimeError: if a parameter or buffer of the model changed, naming it.
    """
    _check_task(task, num_classes)
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    train_features = decoder_features(model, train_images, batch_size=feature_batch_size)
    test_features = decoder_features(model, test_images, batch_size=feature_batch_size)
    _check_unchanged(model, before)
    probe, fit = fit_probe(
        train_features,
        train_targets,
        task=task,
        num_classes=num_classes,
        max_depth=max_depth,
        min_depth=min_depth,
        epochs=epochs,
        seed=seed,
        **fit_kwargs,
    )
    eval_kwargs: dict[str, Any] = {"task": task, "num_classes": num_classes}
    if task == "depth":
        eval_kwargs.update(min_depth=eval_min_depth, max_depth=max_depth)
    if "batch_size" in fit_kwargs:
        eval_kwargs["batch_size"] = fit_kwargs["batch_size"]
    result = {
        "metrics": evaluate_probe(probe, test_features, test_targets, **eval_kwargs),
        "train_metrics": evaluate_probe(probe, train_features, train_targets, **eval_kwargs),
        "fit": fit,
        "feature_shape": list(train_features.shape[1:]),
    }
    _check_unchanged(model, before)
    return result


def synth_probe_data(
    num: int, size: tuple[int, int], seed: int, task: str, **render_options: Any
) -> tuple[Tensor, Tensor]:
    """SynthScenes as stacked tensors for a probe.

    Args:
        num: number of scenes.
        size: (H, W) in pixels.
        seed: data-set seed (scene i depends only on (seed, i)).
        task: ``"segmentation"`` or ``"depth"``: which targets to return.
        **render_options: options of :class:`~predec.data.synthetic.SynthScenes` (``noise_std``, SceneOptions).

    Returns:
        Normalised images (N, 3, H, W) float32 and targets: labels (N, H, W) int64 (255 = nothing hit) or depth
        (N, 1, H, W) float32 metres (0 = invalid).
    """
    if task not in PROBE_TASKS:
        raise ValueError(f"Unknown probe task {task!r}; valid: {', '.join(PROBE_TASKS)}.")
    if num < 1:
        raise ValueError(f"num must be >= 1 scene; got {num}.")
    data = SynthScenes(num, size=size, seed=seed, transform=eval_transform(), **render_options)
    samples = [data[i] for i in range(num)]
    images = torch.stack([s["image"].as_subclass(Tensor) for s in samples]).float()
    if task == "segmentation":
        targets = torch.stack([s["labels"].as_subclass(Tensor) for s in samples]).long()
    else:
        targets = torch.stack([s["depth"].as_subclass(Tensor) for s in samples]).float()
    return images, targets

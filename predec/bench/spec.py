"""What ``predec bench`` can measure: modes, precisions, model specs (``arch:encoder[:decoder]``) and one
configuration (:class:`BenchConfig`). Free of torch, so ``predec bench --help`` answers at once."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
MODES: tuple[str, ...] = ("train", "infer", "compile", "onnx")
TASKS: tuple[str, ...] = ("segmentation", "depth")
CLASSIFIER_ARCH = "timm"
"""Spec ``timm:<name>``: a plain timm classification model (1000 classes), a reference point such as ResNet-50."""
LIGHTNING_PRECISION: dict[str, str] = {"fp32": "32-true", "bf16": "bf16-mixed"}
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx512f", "bf16")
"""``/proc/cpuinfo`` flags reported with the results (bf16 units: avx512_bf16, amx_bf16; aarch64: bf16)."""
DEFAULT_MODELS: tuple[str, ...] = (
    "xnet:resnet18:resnet18",
    "xnet:resnet18:convnext_atto",
    "fpn:resnet18",
    "unet:resnet18",
)
RESULT_FIELDS: tuple[str, ...] = (
    "model",
    "mode",
    "precision",
    "channels_last",
    "status",
    "error",
    "params",
    "gflops_per_image",
    "images_per_s",
    "step_ms_median",
    "step_ms_min",
    "step_ms_max",
    "mfu",
    "setup_s",
    "setup_mem_mb",
    "peak_mem_mb",
    "memory_method",
    "wall_s",
)
"""Keys of every result row (``error`` is None unless ``status == "failed"``)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark, written ``arch:encoder[:decoder]``.

    Attributes:
        arch: a predec architecture (:func:`predec.list_models`) or ``"timm"`` (plain timm classifier).
        encoder: timm model name of the encoder (for ``timm``: the classifier).
        decoder: timm model name of the ×Net decoder backbone (``xnet`` only, required there).
    """

    arch: str
    encoder: str
    decoder: str | None = None

    def __str__(self) -> str:
        return ":".join(part for part in (self.arch, self.encoder, self.decoder) if part)


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``arch:encoder[:decoder]`` (``xnet:resnet18:convnext_atto``, ``fpn:resnet18``, ``timm:resnet50``).

    Raises:
        ValueError: unknown architecture or backbone, missing or superfluous decoder.
    """
    from predec.models.base import list_models
    from predec.models.encoders import check_backbone_name

    parts = text.split(":")
    archs = [*list_models(), CLASSIFIER_ARCH]
    example = "write arch:encoder[:decoder], e.g. xnet:resnet18:convnext_atto, fpn:resnet18 or timm:resnet50"
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"Bad model spec {text!r}: {example}.")
    arch, encoder, decoder = parts[0], parts[1], parts[2] if len(parts) == 3 else None
    if arch not in archs:
        raise ValueError(f"Bad model spec {text!r}: unknown architecture {arch!r}; valid: {', '.join(archs)}.")
    if arch == "xnet" and decoder is None:
        raise ValueError(f"Bad model spec {text!r}: xnet needs a decoder backbone, e.g. xnet:{encoder}:resnet18.")
    if arch != "xnet" and decoder is not None:
        raise ValueError(f"Bad model spec {text!r}: only xnet takes a decoder backbone; write {arch}:{encoder}.")
    for name in (encoder, decoder):
        if name is not None:
            check_backbone_name(name)
    return ModelSpec(arch, encoder, decoder)


@dataclass(frozen=True)
class BenchConfig:
    """One configuration, measured in one fresh process by :func:`run_bench`: a model at one precision and memory
    format, its modes measured in turn (``infer``, ``compile``, ``onnx``, then ``train``).

    Attributes:
        model: model spec text ``arch:encoder[:decoder]``.
        modes: subset of :data:`MODES`.
        precision: one of :data:`PRECISIONS` (``onnx`` always runs the fp32 export).
        channels_last: model and input in ``torch.channels_last`` (``onnx`` always gets NCHW input).
        height: input height.
        width: input width.
        batch: images per step.
        task: ``segmentation`` or ``depth`` (ignored by ``timm:`` classifiers).
        num_classes: segmentation classes.
        steps: timed steps.
        warmup: untimed steps before them (after the FLOP-counting call).
        threads: ``torch.set_num_threads`` (and ONNX Runtime intra-op threads).
        device: ``cpu`` or ``cuda[:N]``.
        compile_backend: ``torch.compile`` backend (``inductor`` is the default of torch).
    """

    model: str
    modes: tuple[str, ...]
    precision: str = "fp32"
    channels_last: bool = False
    height: int = 128
    width: int = 128
    batch: int = 2
    task: str = "segmentation"
    num_classes: int = 21
    steps: int = 3
    warmup: int = 1
    threads: int = 1
    device: str = "cpu"
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))  # JSON round trips give lists
        for name, values, valid in (
            ("mode", self.modes, MODES),
            ("precision", (self.precision,), PRECISIONS),
            ("task", (self.task,), TASKS),
        ):
            bad = [v for v in values if v not in valid]
            if bad or not values:
                raise ValueError(f"Bad {name} {', '.join(map(str, bad)) or '(none)'}; valid: {', '.join(valid)}.")
        if self.steps < 1 or self.warmup < 0 or self.batch < 1:
            raise ValueError(
                f"Need steps ≥ 1, warmup ≥ 0, batch ≥ 1; got steps={self.steps}, warmup={self.warmup}, "
                f"batch={self.batch}."
            )

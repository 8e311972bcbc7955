"""Throughput, memory, FLOPs and model FLOP utilisation (MFU) of dense models: the engine of ``predec bench``.

A *configuration* is a model spec (``arch:encoder[:decoder]``) × precision × memory format; each one runs in a
fresh Python process, which measures its modes in turn (``infer``, ``compile``, ``onnx``, then ``train``):

- ``train``: forward + loss + backward + AdamW step (``predec.optim.build_optimizer`` defaults), model in train mode.
- ``infer``: eager forward under ``torch.inference_mode``, model in eval mode.
- ``compile``: as ``infer`` on ``torch.compile(model)`` (mode default); the first call, which compiles, is timed
  separately (``setup_s``).
- ``onnx``: the fp32 model exported by :func:`predec.models.export.export_onnx`, run by an ONNX Runtime CPU
  session; export + session creation is ``setup_s``. Measured once per model, in its first configuration (ONNX
  Runtime has no bf16 CPU kernels and picks its own memory layout).

Precisions: ``fp32`` and ``bf16`` (bf16-mixed: ``torch.autocast`` to bfloat16, losses in fp32), as Lightning's
``32-true`` and ``bf16-mixed``. :func:`default_precision` says which one the library uses on a device.

Definitions (also in ``docs/benchmarks.md``):

- images/s = batch / median step time (the median resists interference from other processes on a shared machine).
- FLOPs per image: ``torch.utils.flop_counter.FlopCounterMode`` over one eager call at the benchmark batch, ÷ batch
  (train: forward + backward, measured; infer/compile/onnx: forward). Multiply–add = 2 FLOPs.
- MFU = FLOPs per image × images/s ÷ peak, the peak being the best FLOP/s of a square matmul loop in the same
  dtype (fp32 or bf16), same device and thread count, measured in the same run (:func:`matmul_peak_flops`).
- Memory, CPU: the resident-set high-water mark (Linux ``VmHWM``) of the configuration's process over each mode's
  measured span, reset through ``/proc/self/clear_refs`` at its start (after compile/export); everything resident
  counts (Python, torch, weights, optimiser state, activations, allocator caches, what earlier modes left).
  ``setup_mem_mb`` is the resident memory at the start of the span. CUDA: ``torch.cuda.max_memory_allocated`` over
  the same span (tensors only).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on aarch64); empty if unknown."""
    with contextlib.suppress(OSError):
        match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            return set(match.group(1).split())
    return set()


def default_precision(device: str | torch.device = "cpu") -> str:
    """The precision predec trains with on ``device``: ``"bf16"`` (bf16-mixed) where the hardware computes in
    bf16, else ``"fp32"``.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: native bf16 units (AVX512-BF16 or AMX); without them oneDNN
    emulates bf16 and it is slower than fp32 (measured in ``docs/benchmarks.md``). Same rule as the trainer's
    ``precision: auto`` (:func:`predec.engine.trainer.default_precision`).
    """
    from predec.engine.trainer import default_precision as lightning_default

    accelerator = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return "bf16" if lightning_default(accelerator) == "bf16-mixed" else "fp32"


def bf16_runs(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast can run on ``device`` at all (natively or emulated by oneDNN on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(
    dtype: torch.dtype, device: str | torch.device = "cpu", size: int = 2048, min_time: float = 1.0, threads: int = 1
) -> float:
    """The best FLOP/s of ``size × size`` matmuls in ``dtype``: the peak that MFU is measured against.

    One untimed warm-up product, then products until ``min_time`` seconds have passed (at least 3); the fastest
    counts (2·size³ FLOPs each).

    Args:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        device: where to multiply.
        size: matrix side.
        min_time: seconds to keep multiplying.
        threads: CPU threads (``torch.set_num_threads``), as in the measurements.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    best = float("inf")
    with _num_threads(threads), torch.inference_mode():
        torch.mm(a, b)
        _synchronize(device)
        start = time.perf_counter()
        reps = 0
        while reps < 3 or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            torch.mm(a, b)
            _synchronize(device)
            best = min(best, time.perf_counter() - t0)
            reps += 1
    return 2.0 * size**3 / best


# --------------------------------------------------------------------------------------------------- memory
def _proc_status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


class _MemoryProbe:
    """Peak memory over a span: CUDA allocator stats, or the Linux RSS high-water mark reset via clear_refs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda max_memory_allocated"
        self.setup_mb: float | None = None

    def start(self) -> None:
        """Begin the span: reset the peak and remember the current usage."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.setup_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux ≥ 4.0)
            self.method = "peak RSS (VmHWM) of the measured span"
        except OSError:
            self.method = "peak RSS (VmHWM) of the whole process (no clear_refs)"
        rss = _proc_status_kb("VmRSS")
        self.setup_mb = None if rss is None else rss / 1024
        if rss is None:
            self.method = "peak RSS (getrusage) of the whole process"

    def peak_mb(self) -> float | None:
        """Peak usage since :meth:`start` (MiB)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _proc_status_kb("VmHWM")
        if hwm is not None:
            return hwm / 1024
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------------------------------- measuring
def build_model(spec: ModelSpec, task: str, num_classes: int) -> nn.Module:
    """The model of ``spec`` with random weights (``timm:`` → 1000-class timm classifier)."""
    if spec.arch == CLASSIFIER_ARCH:
        import timm

        return timm.create_model(spec.encoder, pretrained=False, num_classes=1000)
    from predec.models.base import create_model

    return create_model(
        spec.arch,
        encoder=spec.encoder,
        decoder=spec.decoder,
        task=task,
        num_classes=num_classes if task == "segmentation" else None,
    )


def _inputs_and_loss(
    spec: ModelSpec, c: BenchConfig, device: torch.device
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Random normalised images and a loss on the model output, as training would compute it."""
    import torch.nn.functional as F

    from predec.tasks.depth import silog_loss
    from predec.tasks.segmentation import cross_entropy_loss

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(c.batch, 3, c.height, c.width, generator=generator).to(device)
    if spec.arch == CLASSIFIER_ARCH:
        classes = torch.randint(0, 1000, (c.batch,), generator=generator).to(device)
        return x, lambda out: F.cross_entropy(out.float(), classes)
    if c.task == "segmentation":
        labels = torch.randint(0, c.num_classes, (c.batch, c.height, c.width), generator=generator).to(device)
        return x, lambda out: cross_entropy_loss(out, labels)
    depth = (0.5 + 9.5 * torch.rand(c.batch, 1, c.height, c.width, generator=generator)).to(device)
    return x, lambda out: silog_loss(out, depth)


def _count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _time_steps(fn: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


EXECUTION_ORDER: tuple[str, ...] = ("infer", "compile", "onnx", "train")
"""Order of the modes in a configuration's process: training last, so that its gradients and optimiser state are
not resident during the inference modes."""


class _Run:
    """The model, input and loss of one configuration, and the measurement of each mode on them."""

    def __init__(self, c: BenchConfig) -> None:
        torch.set_num_threads(c.threads)
        torch.manual_seed(0)
        self.c = c
        self.device = torch.device(c.device)
        spec = parse_model_spec(c.model)
        self.model = build_model(spec, c.task, c.num_classes).to(self.device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.x, self.loss_fn = _inputs_and_loss(spec, c, self.device)
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.forward_flops: int | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.c.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward_step(self, net: Callable[[Tensor], Tensor]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode(), self.autocast():
                return net(self.x)

        return run

    def count_forward_flops(self) -> int:
        if self.forward_flops is None:
            self.model.eval()
            self.forward_flops = _count_flops(self.forward_step(self.model))
        return self.forward_flops

    def measure(self, mode: str) -> dict[str, Any]:
        """Set up ``mode``, then time its steps; the memory span starts after the setup (compile, export)."""
        c, device = self.c, self.device
        wall_start = time.perf_counter()
        memory = _MemoryProbe(device)
        setup_s = None
        if mode == "train":
            from predec.config import OptimConfig
            from predec.optim import build_optimizer

            self.model.train()
            memory.start()
            optimizer = build_optimizer(self.model, OptimConfig())

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    out = self.model(self.x)
                self.loss_fn(out).backward()
                optimizer.step()

            flops = _count_flops(step)  # the first step: forward + backward, measured
        elif mode == "infer":
            self.model.eval()
            memory.start()
            flops = self.count_forward_flops()
            step = self.forward_step(self.model)
        elif mode == "compile":
            flops = self.count_forward_flops()
            torch._dynamo.reset()
            step = self.forward_step(torch.compile(self.model, backend=c.compile_backend))
            t0 = time.perf_counter()
            step()
            _synchronize(device)
            setup_s = time.perf_counter() - t0
            memory.start()
        else:  # onnx: the fp32 model with NCHW weights, on the CPU
            flops = self.count_forward_flops()
            export_copy = copy.deepcopy(self.model).cpu().to(memory_format=torch.contiguous_format)
            step, setup_s = _onnx_step(export_copy, self.x, c.threads)
            del export_copy
            memory = _MemoryProbe(torch.device("cpu"))
            memory.start()
        times = _time_steps(step, c.warmup, c.steps, device)
        peak_mb = memory.peak_mb()
        if mode == "train":
            del optimizer, step
            self.model.zero_grad(set_to_none=True)
        median = statistics.median(times)
        images_per_s = c.batch / median
        flops_per_image = flops / c.batch
        return {
            "model": c.model,
            "mode": mode,
            "precision": "fp32" if mode == "onnx" else c.precision,
            "channels_last": None if mode == "onnx" else c.channels_last,
            "status": "ok",
            "error": None,
            "params": self.params,
            "gflops_per_image": flops_per_image / 1e9,
            "images_per_s": images_per_s,
            "step_ms_median": 1e3 * median,
            "step_ms_min": 1e3 * min(times),
            "step_ms_max": 1e3 * max(times),
            "mfu": None,  # filled in by run_bench from the peak of this precision
            "achieved_gflop_per_s": flops_per_image * images_per_s / 1e9,
            "setup_s": setup_s,
            "setup_mem_mb": memory.setup_mb,
            "peak_mem_mb": peak_mb,
            "memory_method": memory.method,
            "wall_s": time.perf_counter() - wall_start,
        }


def measure(c: BenchConfig) -> list[dict[str, Any]]:
    """Measure every mode of ``c`` in this process; one result row per mode (keys :data:`RESULT_FIELDS`), in
    :data:`MODES` order. A mode that raises gives a row with ``status="failed"``; the others still run.

    Raises:
        ValueError: bad model spec; any error while building the model.
    """
    run = _Run(c)
    rows = {}
    for mode in (m for m in EXECUTION_ORDER if m in c.modes):
        start = time.perf_counter()
        try:
            rows[mode] = run.measure(mode)
        except Exception as err:  # a failing mode must not stop the other measurements
            rows[mode] = _failed_row(c, mode, f"{type(err).__name__}: {err}", time.perf_counter() - start)
        gc.collect()
    return [rows[mode] for mode in MODES if mode in rows]


def _onnx_step(model: nn.Module, x: Tensor, threads: int) -> tuple[Callable[[], Any], float]:
    """Export with :func:`predec.models.export.export_onnx` (dynamic batch/height/width, as users deploy it) to a
    temporary file; return (a step running it in ONNX Runtime on ``x``, export + session seconds)."""
    import onnxruntime as ort

    from predec.models.export import export_onnx

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="predec-bench-") as tmp:
        with warnings.catch_warnings():  # the exporter's deprecation and tracer warnings are not the bench's news
            warnings.simplefilter("ignore")
            path = export_onnx(model.cpu(), Path(tmp) / "model.onnx", size=tuple(x.shape[-2:]), batch_size=len(x))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.detach().float().cpu().contiguous().numpy()}
    setup_s = time.perf_counter() - t0
    return (lambda: session.run(None, feed)), setup_s


# --------------------------------------------------------------------------------------------------- orchestration
def _failed_row(c: BenchConfig, mode: str, error: str, wall_s: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(RESULT_FIELDS)
    row.update(
        model=c.model,
        mode=mode,
        precision="fp32" if mode == "onnx" else c.precision,
        channels_last=None if mode == "onnx" else c.channels_last,
        status="failed",
        error=error,
        wall_s=wall_s,
    )
    return row


def _measure_in_process(c: BenchConfig) -> list[dict[str, Any]]:
    start = time.perf_counter()
    try:
        return measure(c)
    except Exception as err:  # a failing model must not stop the other configurations
        error = f"{type(err).__name__}: {err}"
        return [_failed_row(c, mode, error, time.perf_counter() - start) for mode in MODES if mode in c.modes]


def measure_isolated(c: BenchConfig, timeout: float = 1800.0) -> list[dict[str, Any]]:
    """Run :func:`measure` in a fresh Python process (``python -m predec.bench``), so that its memory is its own;
    a crash or timeout gives rows with ``status="failed"`` and the error text."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="predec-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "predec.bench", json.dumps(asdict(c)), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            error = None
            if proc.returncode != 0 or not out.is_file():
                error = f"exit code {proc.returncode}: " + "\n".join(proc.stderr.strip().splitlines()[-5:])
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
        if error:
            return [_failed_row(c, mode, error, time.perf_counter() - start) for mode in MODES if mode in c.modes]
        return json.loads(out.read_text())


def plan_configs(
    models: Sequence[str],
    modes: Sequence[str],
    precisions: Sequence[str],
    channels_last: Sequence[bool],
    **settings: Any,
) -> list[BenchConfig]:
    """The configurations of a run: model × precision × channels_last, each with ``modes``; ``onnx`` (always the
    fp32 NCHW export) only in each model's first configuration.

    Args:
        models: model spec texts.
        modes: subset of :data:`MODES`.
        precisions: subset of :data:`PRECISIONS`.
        channels_last: memory formats to try (``[False]``, ``[True]`` or both).
        **settings: the other :class:`BenchConfig` fields (size, batch, task, steps, ...).
    """
    for name, values, valid in (("mode", modes, MODES), ("precision", precisions, PRECISIONS)):
        bad = [v for v in values if v not in valid]
        if bad or not values:
            raise ValueError(f"Bad {name}s {list(values)}; choose from {', '.join(valid)}.")
    if not channels_last:
        raise ValueError("channels_last needs at least one memory format (True, False or both).")
    plan = []
    for text in models:
        parse_model_spec(text)  # fail before any measurement runs
        first = True
        for precision in precisions:
            for cl in channels_last:
                config_modes = tuple(m for m in modes if m != "onnx" or first)
                if config_modes:
                    plan.append(BenchConfig(text, config_modes, precision, cl, **settings))
                first = False
    return plan


@dataclass
class BenchReport:
    """Everything one ``predec bench`` run measured (``to_json`` gives the JSON file's content).

    Attributes:
        machine: CPU name, bf16-relevant flags, device, threads, library versions, load average at start and end.
        settings: input size, batch, task, steps, warm-up, matmul size.
        default_precision: :func:`default_precision` on the device.
        peak_gflop_per_s: matmul peak per precision, the better of the two measurements (MFU's denominator).
        peak_gflop_per_s_runs: the matmul peak measured before and after the measurements.
        results: one row per measurement (keys :data:`RESULT_FIELDS` + ``achieved_gflop_per_s`` +
            ``images_per_s_rounds``).
    """

    machine: dict[str, Any]
    settings: dict[str, Any]
    default_precision: str
    peak_gflop_per_s: dict[str, float] = field(default_factory=dict)
    peak_gflop_per_s_runs: dict[str, list[float]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2)


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU/GPU name, bf16-relevant CPU flags, threads and library versions."""
    import onnxruntime
    import timm

    from predec.engine.trainer import cpu_name

    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "bf16_cpu_flags": {flag: flag in flags for flag in BF16_CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
        "threads": threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    modes: Sequence[str] = ("train", "infer", "onnx"),
    precisions: Sequence[str] | None = None,
    channels_last: Sequence[bool] = (True,),
    height: int = 128,
    width: int = 128,
    batch: int = 2,
    task: str = "segmentation",
    num_classes: int = 21,
    steps: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    compile_backend: str = "inductor",
    matmul_size: int | None = None,
    matmul_seconds: float = 2.0,
    repeats: int = 1,
    isolate: bool = True,
    timeout: float = 1800.0,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure every model × precision × memory format × mode and the matmul peaks; fill in MFU.

    Args:
        models: model specs ``arch:encoder[:decoder]``.
        modes: subset of :data:`MODES`.
        precisions: subset of :data:`PRECISIONS`; None = ``fp32`` and ``bf16`` where bf16 runs at all.
        channels_last: memory formats to measure.
        height: input height (a multiple of the model's output stride).
        width: input width.
        batch: images per step.
        task: ``segmentation`` or ``depth``.
        num_classes: segmentation classes.
        steps: timed steps per measurement.
        warmup: untimed steps before them.
        threads: CPU threads; None = ``torch.get_num_threads()``.
        device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (cuda if available).
        compile_backend: ``torch.compile`` backend of the ``compile`` mode.
        matmul_size: matrix side of the peak measurement; None = 2048 on CPU, 8192 on CUDA.
        matmul_seconds: seconds per dtype of each peak measurement (one before the measurements, one after; the
            better one counts, so that a busy moment on a shared machine does not lower the peak).
        repeats: rounds over the whole plan (interleaved, so that a busy spell on a shared machine hits all
            configurations alike); each row is its fastest round, ``images_per_s_rounds`` lists all.
        isolate: one fresh process per measurement (honest peak memory); False runs them in this process.
        timeout: seconds allowed per isolated measurement.
        progress: called with a line of text before each measurement.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    threads = threads or torch.get_num_threads()
    if precisions is None:
        precisions = ["fp32", "bf16"] if bf16_runs(dev) else ["fp32"]
    if "bf16" in precisions and not bf16_runs(dev):
        raise ValueError(f"bf16 autocast does not run on {device}; use --precision fp32.")
    matmul_size = matmul_size or (8192 if dev.type == "cuda" else 2048)
    settings = dict(
        height=height,
        width=width,
        batch=batch,
        task=task,
        num_classes=num_classes,
        steps=steps,
        warmup=warmup,
        threads=threads,
        device=device,
        compile_backend=compile_backend,
    )
    plan = plan_configs(models, modes, precisions, channels_last, **settings)
    machine = machine_info(dev, threads)
    machine["loadavg_start"] = list(os.getloadavg())
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    needed = sorted({c.precision for c in plan} | ({"fp32"} if "onnx" in modes else set()))

    def measure_peaks() -> None:
        for p in needed:
            peak = matmul_peak_flops(dtypes[p], dev, matmul_size, matmul_seconds, threads) / 1e9
            report.peak_gflop_per_s_runs.setdefault(p, []).append(peak)

    report = BenchReport(
        machine=machine,
        settings={**settings, "matmul_size": matmul_size, "repeats": repeats, "isolated": isolate},
        default_precision=default_precision(dev),
    )
    measure_peaks()
    rounds: list[list[list[dict[str, Any]]]] = [[] for _ in plan]
    for repeat in range(1, repeats + 1):
        for index, c in enumerate(plan):
            if progress:
                cl = "channels_last" if c.channels_last else "NCHW"
                progress(
                    f"[{repeat}/{repeats}: {index + 1}/{len(plan)}] {c.model} {c.precision} {cl}: {' '.join(c.modes)}"
                )
            rounds[index].append(measure_isolated(c, timeout) if isolate else _measure_in_process(c))
    for config_rounds in rounds:
        for mode_rows in zip(*config_rounds):  # the same mode in each round
            ok = [row for row in mode_rows if row["status"] == "ok"]
            best = max(ok, key=lambda row: row["images_per_s"]) if ok else mode_rows[-1]
            best["images_per_s_rounds"] = [row["images_per_s"] for row in ok]
            report.results.append(best)
    measure_peaks()
    report.peak_gflop_per_s = {p: max(runs) for p, runs in report.peak_gflop_per_s_runs.items()}
    for row in report.results:
        if row["status"] == "ok":
            row["mfu"] = row["achieved_gflop_per_s"] / report.peak_gflop_per_s[row["precision"]]
    report.machine["loadavg_end"] = list(os.getloadavg())
    return report


# --------------------------------------------------------------------------------------------------- table
def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _reference_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["model"], "train" if row["mode"] == "train" else "infer"


def format_table(report: BenchReport) -> str:
    """The report as a markdown table under two header lines (device, input, matmul peaks, default precision).

    ``vs eager fp32``: images/s ÷ those of plain eager PyTorch in fp32 for the same model: its ``train`` row for
    training, its ``infer`` row for infer/compile/onnx; NCHW where measured, else channels_last.
    ``Δ MB``: peak memory − memory at the start of the measured span (activations, gradients, optimiser state,
    workspaces; see :class:`BenchConfig`).
    """
    s = report.settings
    peaks = ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in report.peak_gflop_per_s.items())
    machine = report.machine.get("gpu") or report.machine["cpu"]
    lines = [
        f"Device: {machine} ({report.machine['device']}, {report.machine['threads']} threads) · "
        f"input {s['batch']}×3×{s['height']}×{s['width']} · task {s['task']} · "
        f"{s['steps']} timed steps after {s['warmup']} warm-up",
        f"Matmul peak ({s['matmul_size']}², same run): {peaks} · predec default precision: {report.default_precision}",
        "",
        "| model | mode | precision | channels_last | params (M) | GFLOPs/img | img/s | vs eager fp32 | step ms | MFU "
        "| peak MB | Δ MB | setup s |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    reference: dict[tuple[str, str], float] = {}
    for cl in (True, False):  # NCHW last, so that it wins where both were measured
        for r in report.results:
            plain = r["status"] == "ok" and r["precision"] == "fp32" and r["mode"] in ("train", "infer")
            if plain and r["channels_last"] is cl:
                reference[_reference_key(r)] = r["images_per_s"]
    for r in report.results:
        cl = "—" if r["channels_last"] is None else ("on" if r["channels_last"] else "off")
        head = f"| {r['model']} | {r['mode']} | {r['precision']} | {cl} |"
        if r["status"] != "ok":
            lines.append(f"{head} failed: {str(r['error']).splitlines()[-1][:80]} |||||||||")
            continue
        ref = reference.get(_reference_key(r))
        ratio = f"{r['images_per_s'] / ref:.2f}×" if ref else "—"
        delta = None if r["setup_mem_mb"] is None else r["peak_mem_mb"] - r["setup_mem_mb"]
        lines.append(
            f"{head} {r['params'] / 1e6:.2f} | {r['gflops_per_image']:.2f} | {r['images_per_s']:.1f} | {ratio} | "
            f"{r['step_ms_median']:.0f} | {100 * r['mfu']:.1f}% | {_fmt(r['peak_mem_mb'], 0)} | {_fmt(delta, 0)} | "
            f"{_fmt(r['setup_s'], 1)} |"
        )
    return "\n".join(lines)


def _worker(argv: Sequence[str]) -> int:
    """``python -m predec.bench MEASUREMENT_JSON OUT_JSON``: run one measurement, write its row to OUT_JSON."""
    if len(argv) != 2:
        print("usage: python -m predec.bench MEASUREMENT_JSON OUT_JSON", file=sys.stderr)
        return 2
    row = measure(BenchConfig(**json.loads(argv[0])))
    Path(argv[1]).write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))

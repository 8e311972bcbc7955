"""One configuration measured in this process: build the model, time its modes, count FLOPs, probe memory."""

from __future__ import annotations

import contextlib
import copy
import gc
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from predec.bench.hardware import MemoryProbe, synchronize
from predec.bench.spec import CLASSIFIER_ARCH, MODES, RESULT_FIELDS, BenchConfig, ModelSpec, parse_model_spec


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


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_steps(fn: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
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
            self.forward_flops = count_flops(self.forward_step(self.model))
        return self.forward_flops

    def measure(self, mode: str) -> dict[str, Any]:
        """Set up ``mode``, then time its steps; the memory span starts after the setup (compile, export)."""
        c, device = self.c, self.device
        wall_start = time.perf_counter()
        memory = MemoryProbe(device)
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

            flops = count_flops(step)  # the first step: forward + backward, measured
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
            synchronize(device)
            setup_s = time.perf_counter() - t0
            memory.start()
        else:  # onnx: the fp32 model with NCHW weights, on the CPU
            flops = self.count_forward_flops()
            export_copy = copy.deepcopy(self.model).cpu().to(memory_format=torch.contiguous_format)
            step, setup_s = _onnx_step(export_copy, self.x, c.threads)
            del export_copy
            memory = MemoryProbe(torch.device("cpu"))
            memory.start()
        times = time_steps(step, c.warmup, c.steps, device)
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
            rows[mode] = failed_row(c, mode, f"{type(err).__name__}: {err}", time.perf_counter() - start)
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


def failed_row(c: BenchConfig, mode: str, error: str, wall_s: float) -> dict[str, Any]:
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

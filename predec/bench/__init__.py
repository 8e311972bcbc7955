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

Modules: :mod:`~predec.bench.spec` (modes, precisions, model specs, :class:`BenchConfig`; no torch),
:mod:`~predec.bench.hardware` (CPU flags, default precision, matmul peak, memory probe), :mod:`~predec.bench.measure`
(one configuration in this process), :mod:`~predec.bench.runs` (planning, one fresh process per configuration, the
report), :mod:`~predec.bench.table` (the Markdown table). Import from the module that defines a name; this package
file imports nothing, so ``predec bench --help`` (which reads :mod:`~predec.bench.spec` only) does not load torch.
"""

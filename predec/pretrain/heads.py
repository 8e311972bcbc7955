"""The three SlotCon heads: dense projector, semantic grouping (prototypes) and slot predictor.

Shapes follow ``docs/decon.md``: maps are (B, C, h, w), slots (B, K, D). The dense projector runs its 1x1
convolutions as matrix multiplications on the (B·h·w, C) rows of a channels-last map, which is where a
DeCon-ML pre-training step spends most of its time and memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def _rows(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B·h·w, C); a view without copy when ``maps`` is channels-last."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def _maps(rows: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """(B·h·w, C) -> (B, C, h, w), a channels-last view of ``rows`` (no copy)."""
    return rows.view(batch, height, width, rows.shape[1]).permute(0, 3, 1, 2)


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, *, bias_before_norm: bool) -> nn.Sequential:
    """Linear-BN-GELU, Linear-BN-GELU, Linear; weights trunc-normal(0.02), biases zero (as the reference)."""
    layers = nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=bias_before_norm),
        nn.BatchNorm1d(hidden_dim),
        nn.GELU(),
        nn.Linear(hidden_dim, hidden_dim, bias=bias_before_norm),
        nn.BatchNorm1d(hidden_dim),
        nn.GELU(),
        nn.Linear(hidden_dim, out_dim),
    )
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return layers


CHUNK_ELEMENTS = 8 * 2**20
"""Elements of one row-chunk temporary of the memory-saving projector (32 MiB in fp32): 2048 rows of a 4096-wide
hidden layer. Inputs with fewer rows run as one chunk."""


def _spans(rows: int, width: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of the chunks of a ``width``-wide layer with ``rows`` rows."""
    chunk = max(1, CHUNK_ELEMENTS // max(width, 1))
    return [(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of BatchNorm statistics and of the per-chunk normalisation arithmetic: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def _momentum(norm: nn.BatchNorm1d) -> float:
    """Count one more batch in ``norm`` and return its running-statistics momentum, as ``nn.BatchNorm1d`` does."""
    norm.num_batches_tracked.add_(1)
    if norm.momentum is None:  # cumulative moving average
        return 1.0 / float(norm.num_batches_tracked)
    return norm.momentum


class _Workspace:
    """Chunk-sized buffers reused by every chunk of one forward or backward call.

    Every per-chunk temporary lives in one of these, and every element-wise operation on a chunk either runs in one
    dtype or is one of BatchNorm's kernels, which read bf16 and compute in fp32 themselves: an element-wise operation
    that mixes dtypes makes PyTorch allocate a converted copy of its input, i.e. a fresh chunk-sized allocation
    (under :func:`predec.allocator.tune_glibc` a fresh ``mmap`` and thousands of page faults) and slow
    mixed-dtype arithmetic.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised (rows, cols) buffer named ``name`` (a view of the one allocated first, when it fits)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[0] < rows or buffer.shape[1] != cols or buffer.dtype != dtype:
            buffer = self._buffers[name] = torch.empty(rows, cols, dtype=dtype, device=self.device)
        return buffer[:rows]

    def converted(self, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` in ``dtype``: ``tensor`` itself when it has that dtype, else its copy in the buffer ``name``."""
        if tensor.dtype == dtype:
            return tensor
        return self.get(name, *tensor.shape, dtype).copy_(tensor)


class _Norm(NamedTuple):
    """A BatchNorm layer of the projector with the statistics of the current batch (:func:`_stat_dtype`); build it
    with :meth:`of`."""

    gamma: torch.Tensor
    beta: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor  # biased batch variance
    eps: float
    invstd: torch.Tensor  # 1 / sqrt(var + eps)

    @classmethod
    def of(cls, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> _Norm:
        """The layer's parameters and batch statistics, with ``invstd`` derived once."""
        return cls(gamma, beta, mean, var, eps, torch.rsqrt(var + eps))


def _chunk_mean_var(work: _Workspace, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and biased variance of ``chunk`` (N, C), in :func:`_stat_dtype`.

    BatchNorm's training kernel computes them (two passes; fp32 arithmetic on a bf16 chunk without a converted copy),
    several times faster on a CPU than ``torch.var_mean`` over the rows; its normalised output goes to a scratch
    buffer. With ``eps = 0`` it returns ``1 / sqrt(var)``, inverted here; for a constant column (one row, say) it
    returns 0 instead of ``inf``.
    """
    dtype = _stat_dtype(chunk.dtype)
    ones = torch.ones(chunk.shape[1], dtype=dtype, device=chunk.device)  # a weight in that dtype: fp32 statistics
    mean, invstd = torch.empty_like(ones), torch.empty_like(ones)
    torch.ops.aten.native_batch_norm.out(
        chunk, ones, None, None, None, True, 0.0, 0.0,
        out=work.get("scratch", *chunk.shape, chunk.dtype), save_mean=mean, save_invstd=invstd,
    )  # fmt: skip
    return mean, torch.where(invstd > 0, invstd.pow(-2), 0.0)


def _batch_norm_stats(
    chunks: Iterable[torch.Tensor],
    rows: int,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    work: _Workspace,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and biased variance of the rows of ``chunks`` (fp32, fp64 for fp64 inputs); updates the running
    statistics as ``nn.BatchNorm1d`` (unbiased running variance).

    Chunks are merged with Chan et al.'s pairwise formula, so one chunk is the largest temporary.
    """
    count, mean, m2 = 0, None, None
    for chunk in chunks:
        mean_part, var_part = _chunk_mean_var(work, chunk)
        size = chunk.shape[0]
        if mean is None:
            mean, m2 = mean_part, var_part * size
        else:
            delta = mean_part - mean
            mean = mean + delta * (size / (count + size))
            m2 = m2 + var_part * size + delta.square() * (count * size / (count + size))
        count += size
    assert mean is not None and m2 is not None and count == rows
    var = m2 / rows
    running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1.0 - momentum).add_((var * (rows / (rows - 1))).to(running_var.dtype), alpha=momentum)
    return mean, var


def _mm(work: _Workspace, name: str, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` into the workspace buffer ``name``."""
    return torch.mm(left, right, out=work.get(name, left.shape[0], right.shape[1], left.dtype))


def _normalise(work: _Workspace, part: torch.Tensor, norm: _Norm) -> torch.Tensor:
    """``batch_norm(part)`` with the batch's statistics, in ``part``'s dtype (computed in fp32 for bf16, rounded
    once, as the native mixed-precision kernel)."""
    empty = norm.mean.new_empty(0)
    return torch.ops.aten.native_batch_norm.out(
        part, norm.gamma, norm.beta, norm.mean, norm.var, False, 0.0, norm.eps,
        out=work.get("normed", *part.shape, part.dtype), save_mean=empty, save_invstd=empty,
    )[0]  # fmt: skip


def _gelu(work: _Workspace, normed: torch.Tensor) -> torch.Tensor:
    """``gelu(normed)`` into a workspace buffer."""
    return torch.ops.aten.gelu.out(normed, out=work.get("activated", *normed.shape, normed.dtype))


def _gelu_grad(work: _Workspace, grad_out: torch.Tensor, weight: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
    """``d loss / d normed`` of ``linear(gelu(normed))`` from the linear layer's output gradient ``grad_out``."""
    grad = _mm(work, "grad_activated", grad_out, weight)
    return torch.ops.aten.gelu_backward.grad_input(grad, normed, grad_input=grad)


def _add_matmul(work: _Workspace, total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``total += left @ right``, the product in the operands' dtype and accumulated in ``total``'s."""
    if total.dtype == left.dtype:
        total.addmm_(left, right)
    else:
        total += work.converted("weight_grad_wide", _mm(work, "weight_grad", left, right), total.dtype)


def _add_sums(sums: torch.Tensor, dy: torch.Tensor, part: torch.Tensor, norm: _Norm) -> None:
    """BatchNorm backward's reductions of one chunk: ``sums[0] += Σ_rows dy``, ``sums[1] += Σ_rows dy·x̂``
    (BatchNorm's backward kernel, fp32 arithmetic for bf16 chunks)."""
    _, dot, total = torch.ops.aten.native_batch_norm_backward(
        dy, part, norm.gamma, None, None, norm.mean, norm.invstd, True, norm.eps, [False, True, True]
    )
    sums[0] += total
    sums[1] += dot


def _norm_input_grad(
    work: _Workspace, dy: torch.Tensor, part: torch.Tensor, norm: _Norm, sums: torch.Tensor, rows: int
) -> torch.Tensor:
    """BatchNorm's input gradient ``γ·invstd·(dy − Σdy/N − x̂·Σ(dy·x̂)/N)`` of one chunk, in :func:`_stat_dtype`.

    Written as ``a·dy + b·x + d`` with per-column ``a = γ·invstd``, ``b = −a·invstd·Σ(dy·x̂)/N`` and
    ``d = −a·Σdy/N − b·mean``: two fused multiply-adds on the chunk.
    """
    dtype, invstd = sums.dtype, norm.invstd
    gain = norm.gamma.to(dtype) * invstd
    slope = -gain * invstd * (sums[1] / rows)
    offset = -gain * (sums[0] / rows) - slope * norm.mean
    grad = torch.addcmul(offset, work.converted("part", part, dtype), slope, out=work.get("grad", *part.shape, dtype))
    return torch.addcmul(grad, work.converted("dy", dy, dtype), gain, out=grad)


def _projector_forward(
    x: torch.Tensor,
    w1: torch.Tensor,
    norm1: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float],
    w2: torch.Tensor,
    norm2: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float],
    w3: torch.Tensor,
    b3: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, tuple[_Norm, _Norm]]:
    """``linear3(gelu(bn2(linear2(gelu(bn1(linear1(x)))))))`` in training mode, row chunk by row chunk.

    ``h1 = x @ w1ᵀ`` is never materialised: each chunk is computed where needed (with ``C`` = 256 input channels a
    recomputation costs 1/16 of the 4096 x 4096 layer). ``h2 = linear2(...)`` is the only full-size tensor.

    Args:
        x: (N, C) rows in the compute dtype.
        w1, w2, w3, b3: the linear layers' parameters (hidden layers without bias).
        norm1, norm2: ``(gamma, beta, running_mean, running_var, momentum, eps)``; running statistics updated.

    Returns:
        The output (N, out), ``h2`` (N, hidden) and both BatchNorms with the batch's statistics.
    """
    rows = x.shape[0]
    if rows < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    spans, work = _spans(rows, w2.shape[0]), _Workspace(x.device)
    w1t, w2t, w3t, b3 = w1.to(x.dtype).t(), w2.to(x.dtype).t(), w3.to(x.dtype).t(), b3.to(x.dtype)
    gamma1, beta1, *running1, eps1 = norm1
    gamma2, beta2, *running2, eps2 = norm2
    h1_chunks = (_mm(work, "h1", x[a:b], w1t) for a, b in spans)
    bn1 = _Norm.of(gamma1, beta1, *_batch_norm_stats(h1_chunks, rows, *running1, work), eps1)
    h2 = x.new_empty(rows, w2.shape[0])
    for a, b in spans:
        activated = _gelu(work, _normalise(work, _mm(work, "h1", x[a:b], w1t), bn1))
        torch.mm(activated, w2t, out=h2[a:b])
    bn2 = _Norm.of(gamma2, beta2, *_batch_norm_stats((h2[a:b] for a, b in spans), rows, *running2, work), eps2)
    out = x.new_empty(rows, w3.shape[0])
    for a, b in spans:
        torch.addmm(b3, _gelu(work, _normalise(work, h2[a:b], bn2)), w3t, out=out[a:b])
    return out, h2, (bn1, bn2)


class _ProjectorFunction(torch.autograd.Function):
    """The dense projector in training mode with plain BatchNorms, saving only its input rows and ``h2``.

    Forward and backward run over row chunks of :data:`CHUNK_ELEMENTS` elements: ``h2`` (N, hidden) is the only
    tensor as large as a hidden activation, in forward and in backward, where it is overwritten by the gradient
    with respect to ``h2`` and then by the one with respect to ``bn1``'s output (so the graph can be
    back-propagated once: ``retain_graph`` is refused). ``h1``, the normalised and activated tensors are
    recomputed per chunk, in chunk-sized buffers reused from chunk to chunk. Matrix products and GELU run in the
    dtype of the rows (bf16 under autocast, as the surrounding matmuls); BatchNorm statistics, normalisation and
    gradients in fp32 by BatchNorm's own mixed-precision kernels (as under autocast) and fp32 arithmetic; the
    running statistics are updated as ``nn.BatchNorm1d`` does.
    """

    @staticmethod
    def forward(ctx, x, w1, gamma1, beta1, mean1, var1, momentum1, eps1, w2, gamma2, beta2, mean2, var2, momentum2,
                eps2, w3, b3):  # fmt: skip
        norm1 = (gamma1, beta1, mean1, var1, momentum1, eps1)
        norm2 = (gamma2, beta2, mean2, var2, momentum2, eps2)
        out, h2, (bn1, bn2) = _projector_forward(x, w1, norm1, w2, norm2, w3, b3)
        ctx.save_for_backward(x, h2, w1, w2, w3, gamma1, beta1, gamma2, beta2, bn1.mean, bn1.var, bn2.mean, bn2.var)
        ctx.eps = (eps1, eps2)
        ctx.consumed = False
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.consumed:
            raise RuntimeError(
                "The memory-saving DenseProjector overwrites its saved activations in backward and cannot be "
                "back-propagated twice (retain_graph); build it with save_memory=False for that."
            )
        ctx.consumed = True
        x, h2, w1, w2, w3, gamma1, beta1, gamma2, beta2, mean1, var1, mean2, var2 = ctx.saved_tensors
        bn1, bn2 = _Norm.of(gamma1, beta1, mean1, var1, ctx.eps[0]), _Norm.of(gamma2, beta2, mean2, var2, ctx.eps[1])
        rows, dtype = x.shape[0], x.dtype
        spans, work = _spans(rows, h2.shape[1]), _Workspace(x.device)
        grad_out = grad_out.to(dtype)
        w1h, w2h, w3h = w1.to(dtype), w2.to(dtype), w3.to(dtype)
        w1t = w1h.t()
        sums1 = torch.zeros(2, h2.shape[1], dtype=mean1.dtype, device=x.device)  # Σ dy, Σ dy·x̂ of bn1
        sums2 = torch.zeros_like(sums1)  # of bn2
        grad_w1, grad_w2, grad_w3 = torch.zeros_like(w1), torch.zeros_like(w2), torch.zeros_like(w3)
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
        # linear3 and bn2, pass 1: grad_w3 and bn2's sums (dy2 = d loss / d bn2(h2), not stored)
        for a, b in spans:
            normed = _normalise(work, h2[a:b], bn2)
            _add_matmul(work, grad_w3, grad_out[a:b].t(), _gelu(work, normed))
            dy = _gelu_grad(work, grad_out[a:b], w3h, normed)
            _add_sums(sums2, dy, h2[a:b], bn2)
        # bn2, pass 2: dy2 recomputed (a 256-wide product), d loss / d h2 written over h2
        for a, b in spans:
            dy = _gelu_grad(work, grad_out[a:b], w3h, _normalise(work, h2[a:b], bn2))
            h2[a:b] = _norm_input_grad(work, dy, h2[a:b], bn2, sums2, rows)
        grad_h2 = h2
        # linear2 and bn1, pass 1: grad_w2 and bn1's sums; dy1 written over grad_h2 (its chunk is used up)
        for a, b in spans:
            h1 = _mm(work, "h1", x[a:b], w1t)
            normed = _normalise(work, h1, bn1)
            _add_matmul(work, grad_w2, grad_h2[a:b].t(), _gelu(work, normed))
            dy = _gelu_grad(work, grad_h2[a:b], w2h, normed)
            _add_sums(sums1, dy, h1, bn1)
            grad_h2[a:b] = dy
        dy1 = grad_h2
        # bn1, pass 2, and linear1: grad_w1 and grad_x per chunk
        for a, b in spans:
            h1 = _mm(work, "h1", x[a:b], w1t)
            grad_h1 = work.converted("grad_h1", _norm_input_grad(work, dy1[a:b], h1, bn1, sums1, rows), dtype)
            _add_matmul(work, grad_w1, grad_h1.t(), x[a:b])
            torch.mm(grad_h1, w1h, out=grad_x[a:b])
        grad_b3 = grad_out.sum(0, dtype=mean2.dtype).to(w3.dtype)
        grads1 = (sums1[1].to(gamma1.dtype), sums1[0].to(beta1.dtype), None, None, None, None)
        grads2 = (sums2[1].to(gamma2.dtype), sums2[0].to(beta2.dtype), None, None, None, None)
        return grad_x, grad_w1, *grads1, grad_w2, *grads2, grad_w3, grad_b3


class DenseProjector(nn.Module):
    """SlotCon's dense projector: three 1x1 convolutions C -> hidden -> hidden -> out, BN + GELU after the first two.

    The 1x1 convolutions are matrix multiplications on the (B·h·w, C) rows of the map (free for a channels-last
    input) and BatchNorm normalises the same rows, which equals ``Conv2d(k=1)`` + ``BatchNorm2d`` exactly (tested).
    The hidden layers carry no bias: a bias before a BatchNorm is cancelled by its mean subtraction (the
    reference's are zero-initialised and receive zero gradient), so the function is the reference's.

    In training mode with plain ``nn.BatchNorm1d`` layers, ``save_memory`` runs the projector as one chunked
    function (:class:`_ProjectorFunction`): one hidden-sized activation (``h2``) is kept for backward instead of
    six (BN input, GELU input and linear input of both hidden layers), the rest is recomputed per row chunk (the
    first layer's output too: 1/16 of the 4096 x 4096 layer's cost for 256 input channels), and no other
    hidden-sized temporary exists in forward or backward. Without gradients (the teacher, in train mode) the same
    chunked forward runs and saves nothing. With ``nn.SyncBatchNorm`` (after ``convert_sync_batchnorm``) or in
    eval mode the layers run as ordinary modules.

    Args:
        in_dim: input channels C.
        hidden_dim: hidden width (4096 in the papers).
        out_dim: output channels D (256 in the papers).
        save_memory: use the chunked, recomputing function described above.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, *, save_memory: bool = True) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, out_dim, bias_before_norm=False)
        self.save_memory = save_memory

    def _plain_layers(self) -> bool:
        """Whether the layers are the ones :class:`_ProjectorFunction` computes: plain affine BatchNorm1d with
        running statistics, hidden linear layers without bias."""
        linear1, norm1, _, linear2, norm2, _, linear3 = self.mlp
        norms_plain = all(
            type(norm) is nn.BatchNorm1d and norm.affine and norm.track_running_stats for norm in (norm1, norm2)
        )
        return norms_plain and linear1.bias is None and linear2.bias is None and linear3.bias is not None

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Args:
            maps: (B, C, h, w) features, preferably channels-last.

        Returns:
            (B, D, h, w) projected features, channels-last.
        """
        batch, _, height, width = maps.shape
        rows = _rows(maps)
        if self.save_memory and self.training and self._plain_layers():
            linear1, norm1, _, linear2, norm2, _, linear3 = self.mlp
            device = rows.device.type
            if torch.is_autocast_enabled(device):  # the dtype autocast would give the linear layers
                rows = rows.to(torch.get_autocast_dtype(device))
            norms = [(n.weight, n.bias, n.running_mean, n.running_var, _momentum(n), n.eps) for n in (norm1, norm2)]
            with torch.autocast(device, enabled=False):
                if torch.is_grad_enabled():
                    out = _ProjectorFunction.apply(
                        rows, linear1.weight, *norms[0], linear2.weight, *norms[1], linear3.weight, linear3.bias
                    )
                else:  # the teacher: same chunked forward, nothing saved
                    out = _projector_forward(
                        rows, linear1.weight, norms[0], linear2.weight, norms[1], linear3.weight, linear3.bias
                    )[0]
        else:
            out = self.mlp(rows)
        return _maps(out, batch, height, width)


class SlotPredictor(nn.Module):
    """SlotCon's slot predictor (student only): Linear D -> hidden -> hidden -> D with BatchNorm1d + GELU.

    Args:
        dim: slot dimension D (256).
        hidden_dim: hidden width (4096).
    """

    def __init__(self, dim: int = 256, hidden_dim: int = 4096) -> None:
        super().__init__()
        self.mlp = _mlp(dim, hidden_dim, dim, bias_before_norm=True)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """Args:
            slots: (N, D) slot vectors (BatchNorm needs N >= 2 in training mode).

        Returns:
            (N, D) predictions (not normalised).
        """
        return self.mlp(slots)


class SemanticGrouping(nn.Module):
    """K learnable prototypes that softly group the pixels of a projected map into K slots.

    ``scores = cos(prototype_k, z_ij)``; ``attn = softmax_K(scores / temperature) + eps``;
    ``slot_k = Σ_ij attn_kij · z_ij / Σ_ij attn_kij`` with the un-normalised ``z``. Computed in fp32 whatever
    the input dtype (autocast is disabled inside).

    Args:
        num_prototypes: K (256 for COCO, 2048 for ImageNet in the papers).
        dim: prototype dimension D (256).
        temperature: softmax temperature of the attention (the teacher temperature, 0.07).
        eps: added to the attention before the per-slot normalisation (1e-6).
    """

    def __init__(self, num_prototypes: int, dim: int = 256, temperature: float = 0.07, eps: float = 1e-6) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))  # N(0, 1) as the reference's nn.Embedding
        self.temperature = temperature
        self.eps = eps

    @property
    def num_prototypes(self) -> int:
        """K."""
        return self.prototypes.shape[0]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            z: (B, D, h, w) projected features.

        Returns:
            scores: (B, K, h, w) raw cosine similarities (fp32, channels-last strides).
            slots: (B, K, D) attention-weighted means of ``z`` (fp32).
        """
        batch, dim, height, width = z.shape
        if dim != self.prototypes.shape[1]:
            raise ValueError(
                f"SemanticGrouping expects {self.prototypes.shape[1]} channels, got z of shape {tuple(z.shape)}."
            )
        with torch.autocast(z.device.type, enabled=False):
            pixels = _rows(z).float().view(batch, height * width, dim)
            cosine = F.normalize(pixels, dim=2) @ F.normalize(self.prototypes.float(), dim=1).t()  # (B, hw, K)
            attn = torch.softmax(cosine / self.temperature, dim=2) + self.eps
            attn = attn / attn.sum(dim=1, keepdim=True)
            slots = attn.transpose(1, 2) @ pixels  # (B, K, D)
        scores = _maps(cosine.reshape(-1, self.num_prototypes), batch, height, width)
        return scores, slots

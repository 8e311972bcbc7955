"""The three SlotCon heads: dense projector, semantic grouping (prototypes) and slot predictor.

Shapes follow ``docs/decon.md``: maps are (B, C, h, w), slots (B, K, D). The dense projector runs its 1x1
convolutions as matrix multiplications on the (B·h·w, C) rows of a channels-last map, which is where a
DeCon-ML pre-training step spends most of its time and memory.
"""

from __future__ import annotations

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


class _NormGeluLinear(torch.autograd.Function):
    """``linear(gelu(batch_norm(h)))`` in training mode that saves only ``h`` for backward.

    The normalised and activated tensors (as large as ``h``) are recomputed in backward instead of being kept,
    which divides the activation memory of a 4096-wide projector by three. Computation happens in the dtype
    of ``h`` (bf16 under autocast, as the surrounding matmuls), BatchNorm statistics and affine parameters in
    fp32 (the native mixed-precision kernels); running statistics are updated as ``nn.BatchNorm1d`` does.
    """

    @staticmethod
    def forward(ctx, h, gamma, beta, running_mean, running_var, momentum, eps, weight, bias):
        with torch.autocast(h.device.type, enabled=False):
            normed, mean, invstd = torch.native_batch_norm(
                h, gamma, beta, running_mean, running_var, True, momentum, eps
            )
            out = F.linear(F.gelu(normed), weight.to(h.dtype), None if bias is None else bias.to(h.dtype))
        ctx.save_for_backward(h, gamma, beta, mean, invstd, weight)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, gamma, beta, mean, invstd, weight = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            grad_out = grad_out.to(h.dtype)
            normed, _, _ = torch.native_batch_norm(h, gamma, beta, None, None, True, 0.0, ctx.eps)
            activated = F.gelu(normed)
            grad_weight = (grad_out.t() @ activated).to(weight.dtype)
            del activated
            grad_bias = grad_out.sum(0).to(weight.dtype) if ctx.has_bias else None
            grad_act = grad_out @ weight.to(h.dtype)
            grad_normed = torch.ops.aten.gelu_backward(grad_act, normed)
            del grad_act, normed
            grad_h, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
                grad_normed, h, gamma, None, None, mean, invstd, True, ctx.eps, [True, True, True]
            )
        return grad_h, grad_gamma, grad_beta, None, None, None, None, grad_weight, grad_bias


def _norm_gelu_linear(h: torch.Tensor, norm: nn.BatchNorm1d, linear: nn.Linear) -> torch.Tensor:
    """Memory-saving ``linear(gelu(norm(h)))`` for a plain ``BatchNorm1d`` in training mode."""
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
    momentum = norm.momentum
    if momentum is None:  # cumulative moving average, as nn.BatchNorm1d
        momentum = 1.0 / float(norm.num_batches_tracked)
    return _NormGeluLinear.apply(
        h, norm.weight, norm.bias, norm.running_mean, norm.running_var, momentum, norm.eps, linear.weight, linear.bias
    )


class DenseProjector(nn.Module):
    """SlotCon's dense projector: three 1x1 convolutions C -> hidden -> hidden -> out, BN + GELU after the first two.

    The 1x1 convolutions are matrix multiplications on the (B·h·w, C) rows of the map (free for a channels-last
    input) and BatchNorm normalises the same rows, which equals ``Conv2d(k=1)`` + ``BatchNorm2d`` exactly (tested).
    The hidden layers carry no bias: a bias before a BatchNorm is cancelled by its mean subtraction (the
    reference's are zero-initialised and receive zero gradient), so the function is the reference's.

    In training mode with gradients enabled and plain ``nn.BatchNorm1d`` layers, ``save_memory`` keeps only the
    pre-normalisation activations for backward and recomputes the rest (≈3x less activation memory, a few
    extra element-wise passes). With ``nn.SyncBatchNorm`` (after ``convert_sync_batchnorm``), in eval mode or
    without gradients (the teacher), the layers run as ordinary modules.

    Args:
        in_dim: input channels C.
        hidden_dim: hidden width (4096 in the papers).
        out_dim: output channels D (256 in the papers).
        save_memory: use the recomputing backward described above.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, *, save_memory: bool = True) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, out_dim, bias_before_norm=False)
        self.save_memory = save_memory

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Args:
            maps: (B, C, h, w) features, preferably channels-last.

        Returns:
            (B, D, h, w) projected features, channels-last.
        """
        batch, _, height, width = maps.shape
        rows = _rows(maps)
        linear1, norm1, _, linear2, norm2, _, linear3 = self.mlp
        plain_norms = type(norm1) is nn.BatchNorm1d and type(norm2) is nn.BatchNorm1d
        if self.save_memory and self.training and torch.is_grad_enabled() and plain_norms:
            hidden = linear1(rows)
            hidden = _norm_gelu_linear(hidden, norm1, linear2)
            out = _norm_gelu_linear(hidden, norm2, linear3)
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

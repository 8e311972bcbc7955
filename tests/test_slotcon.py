"""The SlotCon/DeCon objective on hand-built tensors: heads, alignment, losses, center, EMA schedule, α rules."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from predec.pretrain import (
    DenseProjector,
    SemanticGrouping,
    SlotConHead,
    SlotPredictor,
    align_scores,
    contrastive_loss,
    decon_loss,
    decon_momenta,
    group_loss,
    heads,
    momentum_at,
    slot_validity,
    update_center,
    update_momentum,
)


# ----------------------------------------------------------------------------------------------- heads
def _conv_projector(projector: DenseProjector) -> nn.Sequential:
    """The reference's conv form (DINOHead2d) carrying the weights of ``projector``."""
    linear1, norm1, _, linear2, norm2, _, linear3 = projector.mlp
    convs = []
    for linear in (linear1, linear2, linear3):
        conv = nn.Conv2d(linear.in_features, linear.out_features, 1, dtype=linear.weight.dtype)
        conv.weight.data.copy_(linear.weight.data.view_as(conv.weight))
        conv.bias.data.copy_(linear.bias.data if linear.bias is not None else torch.zeros(linear.out_features))
        convs.append(conv)
    norms = [nn.BatchNorm2d(n.num_features, dtype=n.weight.dtype) for n in (norm1, norm2)]
    for norm, src in zip(norms, (norm1, norm2)):
        norm.weight.data.copy_(src.weight.data)
        norm.bias.data.copy_(src.bias.data)
    return nn.Sequential(convs[0], norms[0], nn.GELU(), convs[1], norms[1], nn.GELU(), convs[2])


@pytest.mark.parametrize("save_memory", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_projector_rows_equal_conv_form(save_memory, channels_last, monkeypatch):
    monkeypatch.setattr(heads, "CHUNK_ELEMENTS", 16 * 7)  # 60 rows of width 16: 9 chunks, the last of 4 rows
    torch.manual_seed(0)
    projector = DenseProjector(6, 16, 5, save_memory=save_memory).double()
    with torch.no_grad():  # non-trivial BN affine parameters
        for norm in (projector.mlp[1], projector.mlp[4]):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    reference = _conv_projector(projector)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref = x.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    out, out_ref = projector(x), reference(x_ref)
    assert out.shape == (3, 5, 4, 5)
    torch.testing.assert_close(out, out_ref)
    grad = torch.randn_like(out_ref)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    linears = [projector.mlp[i] for i in (0, 3, 6)]
    for linear, conv in zip(linears, [reference[i] for i in (0, 3, 6)]):
        torch.testing.assert_close(linear.weight.grad, conv.weight.grad.view_as(linear.weight))
    for norm, norm_ref in zip((projector.mlp[1], projector.mlp[4]), (reference[1], reference[4])):
        torch.testing.assert_close(norm.weight.grad, norm_ref.weight.grad)
        torch.testing.assert_close(norm.bias.grad, norm_ref.bias.grad)
        torch.testing.assert_close(norm.running_mean, norm_ref.running_mean)
        torch.testing.assert_close(norm.running_var, norm_ref.running_var)
        assert int(norm.num_batches_tracked) == 1
    projector.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(projector(x), reference(x_ref))


def test_projector_bf16_autocast_memory_saving_matches_plain(monkeypatch):
    monkeypatch.setattr(heads, "CHUNK_ELEMENTS", 32 * 10)  # 72 rows of width 32: 8 chunks, the last of 2 rows
    torch.manual_seed(0)
    lean = DenseProjector(8, 32, 8, save_memory=True)
    plain = DenseProjector(8, 32, 8, save_memory=False)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for projector in (lean, plain):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = projector(xi)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        outs.append(out.float())
        grads.append([xi.grad, *[p.grad for p in projector.parameters()]])
    torch.testing.assert_close(outs[0], outs[1], atol=2e-2, rtol=2e-2)
    for g_lean, g_plain in zip(*grads):
        assert g_lean.dtype == g_plain.dtype and torch.isfinite(g_lean).all()
        torch.testing.assert_close(g_lean, g_plain, atol=5e-2, rtol=5e-2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the teacher's path
        out_lean, out_plain = lean(x), plain(x)
    assert out_lean.dtype == out_plain.dtype == torch.bfloat16
    torch.testing.assert_close(out_lean.float(), out_plain.float(), atol=2e-2, rtol=2e-2)
    for name, buffer in lean.named_buffers():
        torch.testing.assert_close(buffer, plain.get_buffer(name), atol=1e-3, rtol=1e-3)


def _projector_pair(momentum: float | None) -> tuple[DenseProjector, DenseProjector]:
    """A float64 memory-saving projector with non-trivial BN parameters and running statistics, and its plain twin."""
    torch.manual_seed(0)
    lean = DenseProjector(6, 16, 5, save_memory=True).double()
    with torch.no_grad():
        for norm in (lean.mlp[1], lean.mlp[4]):
            norm.momentum = momentum
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
            norm.running_mean.uniform_(-1.0, 1.0)
            norm.running_var.uniform_(0.5, 2.0)
            norm.num_batches_tracked.fill_(3)
        lean.mlp[6].bias.uniform_(-0.5, 0.5)
    plain = copy.deepcopy(lean)
    plain.save_memory = False
    return lean, plain


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_chunked_projector_layers_equal_plain_modules(chunk_rows, momentum, monkeypatch):
    """Chunked BN-GELU-Linear (1-row chunks, 7-row chunks with a ragged last one, one chunk) = nn.Sequential in fp64:
    outputs, input and parameter gradients, running statistics over two steps; then the no-grad teacher path."""
    monkeypatch.setattr(heads, "CHUNK_ELEMENTS", 16 * chunk_rows)
    assert len(heads._spans(60, 16)) == math.ceil(60 / chunk_rows)  # the 60 rows of x, hidden width 16
    lean, plain = _projector_pair(momentum)
    for step in range(2):
        x = (torch.randn(3, 6, 4, 5, dtype=torch.float64) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(3, 5, 4, 5, dtype=torch.float64)
        inputs = []
        for projector in (lean, plain):
            projector.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            out = projector(xi)
            out.backward(grad)
            inputs.append((out.detach(), xi.grad))
        tight = {"rtol": 1e-10, "atol": 1e-12}
        torch.testing.assert_close(inputs[0][0], inputs[1][0], **tight)
        torch.testing.assert_close(inputs[0][1], inputs[1][1], **tight)
        for (name, p_lean), p_plain in zip(lean.named_parameters(), plain.parameters()):
            assert p_lean.grad is not None, name
            torch.testing.assert_close(p_lean.grad, p_plain.grad, **tight, msg=lambda m, n=name: f"{n}: {m}")
        for name, buffer in lean.named_buffers():
            torch.testing.assert_close(buffer, plain.get_buffer(name), **tight, msg=lambda m, n=name: f"{n}: {m}")
        assert int(lean.mlp[1].num_batches_tracked) == 4 + step
    with torch.no_grad():  # the teacher: train mode (batch statistics, running statistics updated), no gradient
        x = torch.randn(2, 6, 5, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(lean(x), plain(x), rtol=1e-10, atol=1e-12)
    for name, buffer in lean.named_buffers():
        torch.testing.assert_close(buffer, plain.get_buffer(name), rtol=1e-10, atol=1e-12)
    assert int(lean.mlp[4].num_batches_tracked) == 6


class _LargeAllocations(TorchDispatchMode):
    """Records the operators that create a new tensor (not a view) of at least ``numel`` elements."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and not tensor._is_view() and tensor.numel() >= self.numel:
                self.ops.append(str(func))
        return out


def test_chunked_projector_keeps_one_hidden_sized_tensor(monkeypatch):
    """Forward and backward of the memory-saving projector create one tensor of hidden size (h2, reused for the
    gradients) where the plain modules create many; the teacher's no-grad forward the same one."""
    monkeypatch.setattr(heads, "CHUNK_ELEMENTS", 16 * 7)
    lean, plain = _projector_pair(0.1)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    hidden_size = 3 * 4 * 5 * 16
    counts = {}
    for name, projector in (("lean", lean), ("plain", plain)):
        xi = x.clone().requires_grad_()
        with _LargeAllocations(hidden_size) as forward:
            out = projector(xi)
        with _LargeAllocations(hidden_size) as backward:
            out.square().sum().backward()
        with torch.no_grad(), _LargeAllocations(hidden_size) as teacher:
            projector(x)
        counts[name] = (forward.ops, backward.ops, teacher.ops)
    assert [len(ops) for ops in counts["lean"]] == [1, 0, 1], counts["lean"]  # h2
    assert len(counts["plain"][0]) >= 6 and len(counts["plain"][1]) >= 4, counts["plain"]


def test_chunked_projector_refuses_a_second_backward():
    lean, _ = _projector_pair(0.1)
    out = lean(torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="back-propagated twice"):
        out.backward()


def test_chunked_projector_rejects_a_single_row_in_training():
    lean, plain = _projector_pair(0.1)
    x = torch.randn(1, 6, 1, 1, dtype=torch.float64)
    for projector in (lean, plain):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            projector(x)


def test_grouping_scores_and_slots_follow_the_formulas():
    torch.manual_seed(0)
    grouping = SemanticGrouping(num_prototypes=3, dim=4, temperature=0.07)
    z = torch.randn(2, 4, 3, 5)
    scores, slots = grouping(z)
    proto = F.normalize(grouping.prototypes, dim=1)
    expected_scores = torch.einsum("kd,bdhw->bkhw", proto, F.normalize(z, dim=1))
    torch.testing.assert_close(scores, expected_scores)
    attn = (expected_scores / 0.07).softmax(dim=1) + 1e-6
    expected_slots = torch.einsum("bdhw,bkhw->bkd", z, attn / attn.sum(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(slots, expected_slots)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores16, slots16 = grouping(z.bfloat16())
    assert scores16.dtype == slots16.dtype == torch.float32


def test_predictor_shapes_and_init():
    predictor = SlotPredictor(8, 16)
    assert predictor(torch.randn(5, 8)).shape == (5, 8)
    assert all(float(layer.bias.detach().abs().max()) == 0 for layer in predictor.mlp if isinstance(layer, nn.Linear))
    assert float(predictor.mlp[0].weight.detach().std()) == pytest.approx(0.02, rel=0.3)


# ------------------------------------------------------------------------------------------ alignment
def test_full_box_is_identity_and_flip_flag_mirrors():
    """§2.1 convention: box·(W, H) with aligned=True, output (h, w): the full box returns the map itself."""
    scores = torch.randn(2, 3, 5, 7)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    aligned = align_scores(scores, boxes, torch.tensor([False, True]))
    torch.testing.assert_close(aligned[0], scores[0])
    torch.testing.assert_close(aligned[1], scores[1].flip(-1))


def test_box_is_scaled_by_width_and_height():
    """The left half box on a linear ramp in x gives the ramp's values at the left-half bin centres."""
    height, width = 4, 8
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 1, height, width).clone()
    aligned = align_scores(ramp, torch.tensor([[0.0, 0.0, 0.5, 1.0]]), torch.tensor([False]))
    # output bin j covers map x in [-0.5 + j·0.5, -0.5 + (j + 1)·0.5]; the ramp is clamped at x < 0.
    expected = torch.clamp(-0.5 + (torch.arange(width) + 0.5) * 0.5, min=0.0)
    torch.testing.assert_close(aligned[0, 0, 1], expected)


def _linear_field(coef: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Channels c of a linear image: coef[c, 0]·x + coef[c, 1]·y + coef[c, 2] at the given coordinates."""
    return coef[:, 0, None, None] * x + coef[:, 1, None, None] * y + coef[:, 2, None, None]


def _view_map(coef, crop, flip, size):
    """Score map of a view: the image field sampled at the centres of the view's (size x size) grid."""
    x0, y0, cw, ch = crop
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    xs = x0 + (1 - centres if flip else centres) * cw
    ys = y0 + centres * ch
    return _linear_field(coef, xs.view(1, -1), ys.view(-1, 1))


@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
def test_crop_flip_then_align_recovers_the_overlap(flips):
    torch.manual_seed(0)
    size, coef = 16, torch.randn(3, 3, dtype=torch.float64)
    crops = [(4.0, 6.0, 40.0, 44.0), (18.0, 2.0, 42.0, 36.0)]  # (x0, y0, width, height) in a 64 px image
    ox1, oy1 = max(c[0] for c in crops), max(c[1] for c in crops)
    ox2, oy2 = min(c[0] + c[2] for c in crops), min(c[1] + c[3] for c in crops)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    overlap = _linear_field(coef, (ox1 + centres * (ox2 - ox1)).view(1, -1), (oy1 + centres * (oy2 - oy1)).view(-1, 1))
    aligned_views = []
    for (x0, y0, cw, ch), flip in zip(crops, flips):
        view = _view_map(coef, (x0, y0, cw, ch), flip, size).unsqueeze(0).float()
        bx1, bx2 = (ox1 - x0) / cw, (ox2 - x0) / cw
        if flip:
            bx1, bx2 = 1 - bx2, 1 - bx1
        box = torch.tensor([[bx1, (oy1 - y0) / ch, bx2, (oy2 - y0) / ch]])
        aligned = align_scores(view, box, torch.tensor([flip]))[0].double()
        # bins touching a view border are clamped by roi_align; the interior is exact for a linear field
        torch.testing.assert_close(aligned[:, 1:-1, 1:-1], overlap[:, 1:-1, 1:-1], atol=1e-4, rtol=1e-4)
        aligned_views.append(aligned)
    torch.testing.assert_close(aligned_views[0][:, 1:-1, 1:-1], aligned_views[1][:, 1:-1, 1:-1], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------- group loss
def _cross_entropy_by_hand(student, teacher, center, t_s, t_t):
    """Mean over pixels of −Σ_k p_t log p_s, with explicit exponentials, in float64."""
    batch, num, height, width = student.shape
    total = 0.0
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                s = [float(student[b, k, i, j]) / t_s for k in range(num)]
                t = [(float(teacher[b, k, i, j]) - float(center[0, k])) / t_t for k in range(num)]
                log_z_s = math.log(sum(math.exp(v) for v in s))
                z_t = sum(math.exp(v) for v in t)
                total += -sum(math.exp(t[k]) / z_t * (s[k] - log_z_s) for k in range(num))
    return total / (batch * height * width)


def test_group_loss_of_identical_maps_is_the_expected_cross_entropy():
    torch.manual_seed(0)
    scores = torch.rand(2, 4, 3, 2) * 2 - 1  # cosine-like values
    center = torch.zeros(1, 4)
    loss = group_loss(scores, scores.clone(), center)
    assert float(loss) == pytest.approx(_cross_entropy_by_hand(scores, scores, center, 0.1, 0.07), rel=1e-5)
    # equal temperatures: the cross-entropy of a distribution with itself is its entropy
    probs = torch.softmax(scores.double() / 0.1, dim=1)
    entropy = -(probs * probs.log()).sum(dim=1).mean()
    assert float(group_loss(scores, scores, center, teacher_temp=0.1)) == pytest.approx(float(entropy), rel=1e-5)
    # constant maps: uniform distributions, loss log K
    assert float(group_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), center)) == pytest.approx(math.log(4))


def test_group_loss_uses_the_center_and_fp32_under_autocast():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)
    center = torch.randn(1, 5) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = group_loss(student.bfloat16(), teacher.bfloat16(), center)
    assert loss.dtype == torch.float32
    expected = _cross_entropy_by_hand(student.bfloat16().float(), teacher.bfloat16().float(), center, 0.1, 0.07)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- contrastive loss
def test_slot_validity_is_the_argmax_over_prototypes():
    scores = torch.zeros(2, 3, 2, 2)
    scores[0, 0] = 1.0  # image 0: prototype 0 wins everywhere
    scores[1, 2, 0, 0] = 1.0  # image 1: prototype 2 wins one pixel, prototype 0 (first index of ties) the rest
    assert slot_validity(scores).tolist() == [[True, False, False], [True, False, True]]


def _info_nce_by_hand(queries, keys, labels, tau):
    total = 0.0
    for q, label in zip(queries, labels):
        logits = [float(q @ k) / tau for k in keys]
        total += -(logits[label] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(labels) * 2 * tau


def test_contrastive_labels_by_hand():
    torch.manual_seed(0)
    queries, keys = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    query_valid = torch.tensor([[True, True, True], [False, True, True]])
    key_valid = torch.tensor([[True, False, True], [True, True, False]])
    # flattened (b, k): valid keys at 0, 2, 3, 4 (ranks 0..3); queries valid in both views at 0, 2, 4
    loss, stats = contrastive_loss(queries, keys, query_valid, key_valid, temperature=0.2)
    q = F.normalize(queries.flatten(0, 1)[[0, 2, 4]], dim=1)
    k = F.normalize(keys.flatten(0, 1)[[0, 2, 3, 4]], dim=1)
    assert float(loss) == pytest.approx(_info_nce_by_hand(q, k, [0, 1, 3], 0.2), rel=1e-5)
    assert stats == {"queries": 3, "keys": 4, "empty": 0}


def test_invalid_slots_are_excluded_and_the_predictor_sees_only_queries():
    torch.manual_seed(0)
    scores = torch.randn(2, 4, 3, 3)
    scores[:, 1] = -5.0  # prototype 1 never wins
    valid = slot_validity(scores)
    assert not valid[:, 1].any()
    queries, keys = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    seen = []
    predictor = nn.Linear(6, 6)
    predictor.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    loss, stats = contrastive_loss(queries, keys, valid, valid, predictor=predictor)
    polluted_q, polluted_k = queries.clone(), keys.clone()
    polluted_q[:, 1], polluted_k[:, 1] = 1e4, -1e4  # values of invalid slots must not matter
    polluted, _ = contrastive_loss(polluted_q, polluted_k, valid, valid, predictor=predictor)
    assert float(loss.detach()) == pytest.approx(float(polluted.detach()))
    assert seen == [stats["queries"]] * 2 and stats["queries"] == int(valid.sum())


def test_no_valid_slot_gives_a_finite_zero_counted_and_connected():
    queries = torch.randn(2, 3, 4, requires_grad=True)
    predictor = SlotPredictor(4, 8)
    none = torch.zeros(2, 3, dtype=torch.bool)
    loss, stats = contrastive_loss(
        queries, torch.randn(2, 3, 4), none, torch.ones(2, 3, dtype=torch.bool), predictor=predictor
    )
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    assert stats == {"queries": 0, "keys": 6, "empty": 1}
    loss.backward()
    assert float(queries.grad.abs().sum()) == 0.0
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in predictor.parameters())
    one = torch.zeros(2, 3, dtype=torch.bool)
    one[0, 0] = True  # a single query cannot go through a training-mode BatchNorm: also empty
    _, stats = contrastive_loss(queries, torch.randn(2, 3, 4), one, one, predictor=predictor)
    assert stats["empty"] == 1


# -------------------------------------------------------------------------------------------- center
def test_update_center_is_the_ema_of_the_mean_teacher_score():
    torch.manual_seed(0)
    center = torch.randn(1, 3)
    view1, view2 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    rows = torch.cat([view1, view2]).permute(0, 2, 3, 1).flatten(0, 2)  # B·h·w·2 rows, K columns (reference)
    expected = 0.9 * center + 0.1 * rows.mean(dim=0, keepdim=True)
    torch.testing.assert_close(update_center(center, [view1, view2], 0.9), expected)


# --------------------------------------------------------------------------------------------- head
def _views(batch=4, channels=8, size=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(batch, channels, size, size, generator=generator) for _ in range(2)]
    boxes = [torch.tensor([[0.1, 0.2, 0.9, 1.0]] * batch), torch.tensor([[0.0, 0.0, 0.8, 0.7]] * batch)]
    flips = [torch.tensor([True, False] * (batch // 2)), torch.tensor([False, True] * (batch // 2))]
    return maps, boxes, flips


def test_slotcon_head_trains_only_the_student_and_updates_the_center():
    torch.manual_seed(0)
    head = SlotConHead(8, num_prototypes=5, hidden_dim=16, out_dim=8)
    maps, boxes, flips = _views()
    loss, terms = head([m.requires_grad_() for m in maps], [m.detach() for m in maps], boxes, flips)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected = 0.5 * (terms["G12"] + terms["G21"]) + 0.5 * (terms["C12"] + terms["C21"])
    torch.testing.assert_close(loss.detach(), expected)
    assert all(not terms[name].requires_grad for name in ("G12", "G21", "C12", "C21"))
    assert terms["empty_contrastive"] == 0 and terms["keys"] >= terms["queries"] > 0
    assert float(head.center.abs().sum()) > 0
    loss.backward()
    assert all(p.grad is not None for p in [*head.projector.parameters(), head.grouping.prototypes])
    assert all(p.grad is not None for p in head.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in head.teacher_projector.parameters())
    assert head.teacher_grouping.prototypes.grad is None
    center = head.center.clone()
    head.eval()
    head(maps, maps, boxes, flips)
    torch.testing.assert_close(head.center, center)  # no center update outside training


def test_per_view_backward_equals_the_joint_loss():
    torch.manual_seed(0)
    joint = SlotConHead(8, num_prototypes=5, hidden_dim=16, out_dim=8)
    split = copy.deepcopy(joint)
    maps, boxes, flips = _views()
    joint_inputs = [m.clone().requires_grad_() for m in maps]
    loss, terms = joint(joint_inputs, maps, boxes, flips)
    loss.backward()
    split_inputs = [m.clone().requires_grad_() for m in maps]
    teacher = split.teacher_forward(maps)
    total, split_terms = 0.0, {}
    for view in (0, 1):
        view_loss, view_terms = split.student_loss(view, split_inputs[view], teacher, boxes, flips)
        view_loss.backward()  # one student view at a time
        total += float(view_loss.detach())
        split_terms.update({k: v for k, v in view_terms.items() if k[0] in "GC"})
    split.update_center_(teacher)
    assert total == pytest.approx(float(loss.detach()), rel=1e-6)
    for name in ("G12", "G21", "C12", "C21"):
        torch.testing.assert_close(split_terms[name], terms[name])
    for joint_input, split_input in zip(joint_inputs, split_inputs):
        torch.testing.assert_close(split_input.grad, joint_input.grad)
    for (name, p_joint), p_split in zip(joint.named_parameters(), split.parameters()):
        if p_joint.requires_grad:
            torch.testing.assert_close(p_split.grad, p_joint.grad, msg=name)
    for b_joint, b_split in zip(joint.buffers(), split.buffers()):  # center and BN statistics
        torch.testing.assert_close(b_split, b_joint)


def test_slotcon_head_under_bf16_autocast_has_fp32_terms():
    torch.manual_seed(0)
    head = SlotConHead(8, num_prototypes=5, hidden_dim=16, out_dim=8)
    maps, boxes, flips = _views()
    maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = head(maps, maps, boxes, flips)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.projector.parameters())


def test_momentum_pairs_and_quirk_b():
    head = SlotConHead(8, num_prototypes=5, hidden_dim=16, out_dim=8)
    assert head.momentum_pairs() == [(head.projector, head.teacher_projector), (head.grouping, head.teacher_grouping)]
    assert head.momentum_pairs(prototypes=False) == [(head.projector, head.teacher_projector)]
    torch.testing.assert_close(head.teacher_grouping.prototypes, head.grouping.prototypes)  # teacher starts equal


# ----------------------------------------------------------------------------------------------- EMA
def test_momentum_schedule_values():
    assert momentum_at(0, 100) == pytest.approx(0.99)
    assert momentum_at(50, 100) == pytest.approx(0.995)
    assert momentum_at(100, 100) == pytest.approx(1.0)
    assert decon_momenta(10, 100) == (momentum_at(10, 100), momentum_at(10, 100))
    # quirk (a): a counter advanced by the encoder and the decoder update, on the same K-step cosine
    encoder, decoder = decon_momenta(25, 100, shared_counter=True)
    assert encoder == pytest.approx(momentum_at(50, 100)) and encoder == pytest.approx(0.995)
    assert decoder == pytest.approx(momentum_at(51, 100))
    assert decon_momenta(50, 100, shared_counter=True)[0] == pytest.approx(1.0)
    assert decon_momenta(99, 100, shared_counter=True)[0] == pytest.approx(
        1 - 0.01 * (math.cos(math.pi * 1.98) + 1) / 2
    )
    with pytest.raises(ValueError, match="step must be in"):
        momentum_at(101, 100)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        momentum_at(0, 0)


def test_update_momentum_math_and_buffers():
    torch.manual_seed(0)
    student, teacher = (
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
    )
    teacher[1].running_mean.fill_(7.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    update_momentum(student, teacher, 0.9)
    for name, param in student.named_parameters():
        torch.testing.assert_close(dict(teacher.named_parameters())[name], 0.9 * before[name] + 0.1 * param)
    torch.testing.assert_close(teacher[1].running_mean, before["1.running_mean"])  # buffers are the teacher's own
    with pytest.raises(ValueError, match="parameters differ"):
        update_momentum(student, nn.Linear(3, 4), 0.9)
    with pytest.raises(ValueError, match="shape"):
        update_momentum(nn.Linear(3, 4), nn.Linear(3, 5), 0.9)


# ----------------------------------------------------------------------------------------- decon_loss
def test_decon_loss_alpha_rules():
    enc, levels = torch.tensor(2.0), [torch.tensor(1.0), torch.tensor(3.0)]
    assert float(decon_loss(enc, levels, 0.5)) == pytest.approx(0.5 * 2.0 + 0.5 * 2.0)
    assert float(decon_loss(enc, levels, 0.25)) == pytest.approx(0.25 * 2.0 + 0.75 * 2.0)
    assert float(decon_loss(enc, [torch.tensor(4.0)], 0.5)) == pytest.approx(3.0)
    assert float(decon_loss(None, levels, 0.0)) == pytest.approx(2.0)
    assert float(decon_loss(enc, [], 0.5)) == pytest.approx(2.0)  # plain SlotCon
    with pytest.raises(ValueError, match="= 1 with a decoder"):
        decon_loss(enc, levels, 1.0)
    with pytest.raises(ValueError, match="alpha = 0 drops the encoder"):
        decon_loss(enc, levels, 0.0)
    with pytest.raises(ValueError, match="needs the encoder loss"):
        decon_loss(None, levels, 0.5)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        decon_loss(enc, levels, 1.5)

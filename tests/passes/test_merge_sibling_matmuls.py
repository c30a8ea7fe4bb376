"""merge_sibling_matmuls: q/k/v projections of one input -> one matmul over the concatenated weights whose
output is sliced back per projection."""

import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, count, run, stats, upto

from ds4c.ir import op_of
from ds4c.pipeline import default_passes


def _qkv(m, x):
    q, k, v = F.linear(x, m.wq), F.linear(x, m.wk), F.linear(x, m.wv)
    return q * 2, k + 1, v.sum(-1)


def test_qkv_merged_and_sliced(device):
    mod = Fn(_qkv, wq=torch.randn(32, 48), wk=torch.randn(16, 48), wv=torch.randn(16, 48))
    g, state = capture(mod, (torch.randn(1, 7, 48),))
    h = run(g, upto("merge_sibling_matmuls"))
    assert stats(h)["merge_sibling_matmuls"] == 3
    assert count(h, "kernel:matmul") == 1 and count(h, "aten.slice.Tensor") == 3
    mm = next(n for n in h if op_of(h, n).is_kernel)
    assert op_of(h, mm).problem["N"] == 64
    slices = sorted(tuple(op_of(h, n).args[1:]) for n in h if op_of(h, n).target == "aten.slice.Tensor")
    assert slices == [(2, 0, 32), (2, 32, 48), (2, 48, 64)]
    assert list(h.graph["derived"].values())[0]["op"] == "cat"
    check_numbers(h, state, mod, (torch.randn(1, 7, 48),), device)


def test_different_inputs_not_merged():
    mod = Fn(lambda m, x, y: (F.linear(x, m.wq), F.linear(y, m.wk)), wq=torch.randn(32, 48), wk=torch.randn(16, 48))
    g, _ = capture(mod, (torch.randn(7, 48), torch.randn(7, 48)))
    h = run(g, upto("merge_sibling_matmuls"))
    assert "merge_sibling_matmuls" not in stats(h) and count(h, "kernel:matmul") == 2


def _qkv_bias(m, x):
    q, k, v = F.linear(x, m.wq, m.bq), F.linear(x, m.wk, m.bk), F.linear(x, m.wv, m.bv)
    return q * 2, k + 1, v.sum(-1)


def test_biased_projections_merge_with_their_biases(device):
    """Qwen2's q/k/v carry biases: one matmul over the concatenated weights plus the concatenated biases."""
    mod = Fn(_qkv_bias, wq=torch.randn(32, 48), wk=torch.randn(16, 48), wv=torch.randn(16, 48),
             bq=torch.randn(32), bk=torch.randn(16), bv=torch.randn(16))
    g, state = capture(mod, (torch.randn(1, 7, 48),))
    h = run(g, upto("merge_sibling_matmuls"))
    assert stats(h)["merge_sibling_matmuls"] == 3 and count(h, "kernel:matmul") == 1
    mm = op_of(h, next(n for n in h if op_of(h, n).is_kernel))
    assert mm.problem["bias"] and mm.problem["epilogue"] == ("add", "acc", "bias")
    shapes = sorted(tuple(d["shape"]) for d in h.graph["derived"].values())
    assert shapes == [(64,), (64, 48)]
    check_numbers(h, state, mod, (torch.randn(1, 7, 48),), device)


def test_biased_and_unbiased_siblings_stay_apart():
    mod = Fn(lambda m, x: (F.linear(x, m.wq, m.bq), F.linear(x, m.wk)), wq=torch.randn(32, 48),
             wk=torch.randn(16, 48), bq=torch.randn(32))
    g, _ = capture(mod, (torch.randn(7, 48),))
    h = run(g, upto("merge_sibling_matmuls"))
    assert "merge_sibling_matmuls" not in stats(h) and count(h, "kernel:matmul") == 2


def _heads(m, x):
    """OPT-style attention inputs: each projection split into heads by a view, then a pointwise op on it."""
    q = F.linear(x, m.wq).view(1, 7, 2, 16) * 0.25
    k = F.linear(x, m.wk).view(1, 7, 1, 16) + 1.0
    v = F.linear(x, m.wv).view(1, 7, 1, 16).transpose(1, 2) * 3.0
    return q, k, v


def test_views_of_the_slices_take_their_strides(device):
    """A view reading a merged projection views a slice of the wider output now: its type carries the slice's
    strides, so the pointwise kernels made later read the real layout (they once failed at launch)."""
    mod = Fn(_heads, wq=torch.randn(32, 48), wk=torch.randn(16, 48), wv=torch.randn(16, 48))
    g, state = capture(mod, (torch.randn(1, 7, 48),))
    h = run(g, upto("merge_sibling_matmuls"))
    assert stats(h)["merge_sibling_matmuls"] == 3
    views = {op_of(h, n).outputs[0].shape: op_of(h, n).outputs[0].stride for n in h
             if op_of(h, n).target == "aten.view.default"}
    assert views == {(1, 7, 2, 16): (448, 64, 16, 1), (1, 7, 1, 16): (448, 64, 16, 1)}
    transposed = next(op_of(h, n).outputs[0] for n in h if op_of(h, n).target == "aten.transpose.int")
    assert transposed.stride == (448, 16, 64, 1)
    h = run(g, default_passes("bf16"))
    assert count(h, "kernel:pointwise") == 3
    check_numbers(h, state, mod, (torch.randn(1, 7, 48),), device)


def test_siblings_whose_views_cannot_alias_a_slice_stay_apart(device):
    """view(1, 224) of a [1, 7, 32] projection flattens two dims: a slice of a wider output cannot be viewed so,
    so that group keeps its own matmuls."""
    mod = Fn(lambda m, x: (F.linear(x, m.wq).view(1, 224) * 2, F.linear(x, m.wk) + 1), wq=torch.randn(32, 48),
             wk=torch.randn(16, 48))
    g, state = capture(mod, (torch.randn(1, 7, 48),))
    h = run(g, upto("merge_sibling_matmuls"))
    assert "merge_sibling_matmuls" not in stats(h) and count(h, "kernel:matmul") == 2
    check_numbers(run(g, default_passes("bf16")), state, mod, (torch.randn(1, 7, 48),), device)

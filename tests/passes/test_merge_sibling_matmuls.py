"""merge_sibling_matmuls: q/k/v projections of one input -> one matmul over the concatenated weights whose
output is sliced back per projection."""

import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, count, run, stats, upto

from ds4c.ir import op_of


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

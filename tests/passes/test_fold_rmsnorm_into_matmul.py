"""fold_rmsnorm_into_matmul: an RMSNorm read only by decode-sized matmuls becomes their prologue (x times
the norm weight, rows scaled by rsqrt(mean(x^2) + eps)) with no derived copy of any weight; declined when
the norm has another reader."""

import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, count, run, stats, targets, upto

from ds4c.ir import op_of


def _norm(m, x):
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return m.g * h.to(x.dtype)


def test_norm_folded_into_merged_projections(device):
    mod = Fn(lambda m, x: (F.linear(_norm(m, x), m.wq), F.linear(_norm(m, x), m.wk)),
             g=1 + 0.1 * torch.randn(48), wq=torch.randn(32, 48) * 0.2, wk=torch.randn(16, 48) * 0.2)
    g, state = capture(mod, (torch.randn(1, 7, 48),))
    h = run(g, upto("fold_rmsnorm_into_matmul"))
    assert stats(h)["fold_rmsnorm_into_matmul"] == 1
    assert "kernel:rmsnorm" not in targets(h) and count(h, "kernel:matmul") == 1
    mm = op_of(h, next(n for n in h if op_of(h, n).target == "kernel:matmul"))
    assert mm.problem["rms_eps"] == 1e-5
    assert sorted(d["op"] for d in h.graph["derived"].values()) == ["cat"]  # the merge's, no scaled copy
    assert op_of(h, mm.args[1].node).target == "input"  # the norm weight itself
    check_numbers(h, state, mod, (torch.randn(1, 7, 48),), device)


def test_norm_folded_into_swiglu(device):
    def fn(m, x):
        h = _norm(m, x)
        return F.silu(F.linear(h, m.wg)) * F.linear(h, m.wu)

    mod = Fn(fn, g=1 + 0.1 * torch.randn(48), wg=torch.randn(40, 48) * 0.2, wu=torch.randn(40, 48) * 0.2)
    g, state = capture(mod, (torch.randn(1, 7, 48),))
    h = run(g, upto("fold_rmsnorm_into_matmul"))
    assert stats(h)["fold_rmsnorm_into_matmul"] == 1 and targets(h) == ["kernel:matmul"]
    check_numbers(h, state, mod, (torch.randn(1, 7, 48),), device)


def test_folded_when_weight_has_another_user(device):
    """The weight stays as it is (no scaled copy), so another matmul may share it."""
    mod = Fn(lambda m, x, y: (F.linear(_norm(m, x), m.w), F.linear(y, m.w)),
             g=1 + 0.1 * torch.randn(48), w=torch.randn(32, 48) * 0.2)
    g, state = capture(mod, (torch.randn(1, 7, 48), torch.randn(1, 7, 48)))
    h = run(g, upto("fold_rmsnorm_into_matmul"))
    assert stats(h)["fold_rmsnorm_into_matmul"] == 1
    assert count(h, "kernel:rmsnorm") == 0 and count(h, "kernel:matmul") == 2 and not h.graph["derived"]
    check_numbers(h, state, mod, (torch.randn(1, 7, 48), torch.randn(1, 7, 48)), device)


def test_declined_when_norm_has_another_reader(device):
    def fn(m, x):
        h = _norm(m, x)
        return F.linear(h, m.w), h

    mod = Fn(fn, g=1 + 0.1 * torch.randn(48), w=torch.randn(32, 48) * 0.2)
    g, state = capture(mod, (torch.randn(1, 7, 48),))
    h = run(g, upto("fold_rmsnorm_into_matmul"))
    assert "fold_rmsnorm_into_matmul" not in stats(h) and count(h, "kernel:rmsnorm") == 1
    check_numbers(h, state, mod, (torch.randn(1, 7, 48),), device)

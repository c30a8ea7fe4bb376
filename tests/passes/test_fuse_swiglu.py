"""fuse_swiglu: silu(x @ Wg.T) * (x @ Wu.T) -> one dual matmul; declined when the gate is read elsewhere."""

import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, count, run, stats, targets, upto

from ds4c.ir import op_of


def _swiglu(m, x):
    return F.silu(F.linear(x, m.wg)) * F.linear(x, m.wu)


def test_swiglu_becomes_one_dual_matmul(device):
    mod = Fn(_swiglu, wg=torch.randn(40, 48) * 0.2, wu=torch.randn(40, 48) * 0.2)
    g, state = capture(mod, (torch.randn(1, 9, 48),))
    h = run(g, upto("fuse_swiglu"))
    assert stats(h)["fuse_swiglu"] == 1 and stats(h)["lower_linear"] == 2
    assert targets(h) == ["kernel:matmul"]
    p = op_of(h, next(n for n in h if op_of(h, n).is_kernel)).problem
    assert p["dual"] and p["epilogue"] == ("mul", ("silu", "acc"), "acc2")
    check_numbers(h, state, mod, (torch.randn(1, 9, 48),), device)


def test_declined_when_gate_is_read_elsewhere(device):
    def fn(m, x):
        gate = F.linear(x, m.wg)
        return F.silu(gate) * F.linear(x, m.wu), gate

    mod = Fn(fn, wg=torch.randn(40, 48) * 0.2, wu=torch.randn(40, 48) * 0.2)
    g, state = capture(mod, (torch.randn(1, 9, 48),))
    h = run(g, upto("fuse_swiglu"))
    assert "fuse_swiglu" not in stats(h) and count(h, "kernel:matmul") == 2
    check_numbers(h, state, mod, (torch.randn(1, 9, 48),), device)

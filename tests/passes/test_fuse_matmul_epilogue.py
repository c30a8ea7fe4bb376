"""fuse_matmul_epilogue: the pointwise kernel reading a matmul output moves into the matmul's epilogue: a
residual add becomes an extra input, a [N] operand the bias, activations follow."""

import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, count, run, stats, targets, upto

from ds4c.ir import op_of


def _problem(h):
    return op_of(h, next(n for n in h if op_of(h, n).target == "kernel:matmul")).problem


def test_residual_add_into_epilogue(device):
    mod = Fn(lambda m, x, r: r + F.linear(x, m.w), w=torch.randn(48, 40) * 0.2)
    g, state = capture(mod, (torch.randn(1, 9, 40), torch.randn(1, 9, 48)))
    h = run(g, upto("fuse_matmul_epilogue"))
    assert stats(h)["fuse_matmul_epilogue"] == 1 and stats(h)["fuse_pointwise"] == 1
    assert targets(h) == ["kernel:matmul"]
    assert _problem(h)["n_extra"] == 1
    check_numbers(h, state, mod, (torch.randn(1, 9, 40), torch.randn(1, 9, 48)), device)


def test_bias_and_activation_into_epilogue(device):
    mod = Fn(lambda m, x: F.gelu(x @ m.w.t() + m.b), w=torch.randn(40, 48) * 0.2, b=torch.randn(40))
    g, state = capture(mod, (torch.randn(1, 9, 48),))
    h = run(g, upto("fuse_matmul_epilogue"))
    assert stats(h)["fuse_matmul_epilogue"] == 1
    assert targets(h) == ["kernel:matmul"]
    p = _problem(h)
    assert p["bias"] and p["n_extra"] == 0 and "gelu" in repr(p["epilogue"])
    check_numbers(h, state, mod, (torch.randn(1, 9, 48),), device)


def test_linear_bias_then_silu(device):
    mod = Fn(lambda m, x: F.silu(F.linear(x, m.w, m.b)) * 2, w=torch.randn(40, 48) * 0.2, b=torch.randn(40))
    g, state = capture(mod, (torch.randn(9, 48),))
    h = run(g, upto("fuse_matmul_epilogue"))
    assert targets(h) == ["kernel:matmul"] and _problem(h)["bias"]
    check_numbers(h, state, mod, (torch.randn(9, 48),), device)


def test_declined_when_matmul_output_read_elsewhere(device):
    def fn(m, x):
        y = F.linear(x, m.w)
        return torch.relu(y), y

    mod = Fn(fn, w=torch.randn(40, 48))
    g, state = capture(mod, (torch.randn(9, 48),))
    h = run(g, upto("fuse_matmul_epilogue"))
    assert "fuse_matmul_epilogue" not in stats(h)
    assert count(h, "kernel:matmul") == 1 and count(h, "kernel:pointwise") == 1
    check_numbers(h, state, mod, (torch.randn(9, 48),), device)

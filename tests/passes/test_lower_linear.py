"""lower_linear: aten linear (export) and mm / addmm over a transposed weight (aot_autograd) -> matmul
kernels, with and without bias; operands the template cannot take stay on ATen."""

import pytest
import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, capture_aten, check_numbers, execute, kernels, run, stats, targets, upto

from ds4c.ir import op_of
from ds4c.precision import assert_close


@pytest.mark.parametrize("bias", [False, True])
def test_linear_lowered(bias, device):
    mod = Fn(lambda m, x: F.linear(x, m.w, m.b if bias else None), w=torch.randn(24, 48), b=torch.randn(24))
    g, state = capture(mod, (torch.randn(2, 7, 48),))
    h = run(g, upto("lower_linear"))
    assert stats(h)["lower_linear"] == 1
    assert targets(h) == ["kernel:matmul"]
    p = op_of(h, next(n for n in h if op_of(h, n).is_kernel)).problem
    assert (p["M"], p["N"], p["K"], p["bias"]) == (14, 24, 48, bias)
    check_numbers(h, state, mod, (torch.randn(2, 7, 48),), device)


@pytest.mark.parametrize("bias", [False, True])
def test_backend_mm_and_addmm_lowered(bias, device):
    def fn(x, w, *b):
        return F.linear(x, w, *b)

    args = (torch.randn(7, 48), torch.randn(40, 48)) + ((torch.randn(40),) if bias else ())
    g, _ = capture_aten(fn, args)
    assert ("aten.addmm.default" if bias else "aten.mm.default") in targets(g)
    h = run(g, upto("lower_linear"))
    assert stats(h)["lower_linear"] == 1 and kernels(h) == ["matmul"]
    args = (torch.randn(7, 48), torch.randn(40, 48)) + ((torch.randn(40),) if bias else ())
    assert_close(execute(h, {}, args, device)[0].cpu(), fn(*args))


def test_non_transposed_mm_stays_aten():
    mod = Fn(lambda m, x: x @ m.w, w=torch.randn(48, 24))  # w [K, N]: not a linear layer's layout
    g, _ = capture(mod, (torch.randn(7, 48),))
    h = run(g, upto("lower_linear"))
    assert "lower_linear" not in stats(h) and kernels(h) == []


def test_mixed_dtypes_stay_aten():
    mod = Fn(lambda m, x: F.linear(x.to(torch.float64), m.w), w=torch.randn(24, 48, dtype=torch.float64))
    g, _ = capture(mod, (torch.randn(7, 48),))
    h = run(g, upto("lower_linear"))
    assert "lower_linear" not in stats(h)


def test_matmul_with_transposed_weight_lowered(device):
    mod = Fn(lambda m, x: x @ m.w.t(), w=torch.randn(24, 48))  # export keeps aten.matmul for 3-d x
    g, state = capture(mod, (torch.randn(2, 7, 48),))
    assert "aten.matmul.default" in targets(g)
    h = run(g, upto("lower_linear"))
    assert stats(h)["lower_linear"] == 1 and targets(h) == ["kernel:matmul"]
    check_numbers(h, state, mod, (torch.randn(2, 7, 48),), device)


@pytest.mark.parametrize("bias", [False, True])
def test_backend_linear_on_a_batch_of_tokens_is_one_linear_op(bias, device):
    """aot_autograd writes linear on [B, T, K] as view [B*T, K] -> mm/addmm -> view [B, T, N]: it becomes one
    linear over x as written (unflatten_linear), so SwiGLU and the epilogues find the layer's output."""
    def fn(x, w1, *rest):  # rest: (b, w2) or (w2,), in the order dynamo makes the graph's inputs
        return F.silu(F.linear(x, w1, *rest[:-1])) * F.linear(x, rest[-1])

    def make():
        return (torch.randn(2, 7, 48), torch.randn(40, 48)) + ((torch.randn(40),) if bias else ()) + (
            torch.randn(40, 48),)

    g, _ = capture_aten(fn, make())
    assert ("aten.addmm.default" in targets(g)) == bias and "aten.mm.default" in targets(g)
    h = run(g, upto("unflatten_linear"))
    assert stats(h)["unflatten_linear"] == 2
    assert targets(h).count("aten.linear.default") == 2
    assert not {"aten.mm.default", "aten.addmm.default", "aten._unsafe_view.default"} & set(targets(h))
    h = run(h, upto("fuse_swiglu")[len(upto("unflatten_linear")):])
    assert ("fuse_swiglu" in stats(h)) == (not bias)  # a biased gate is not a plain SwiGLU matmul
    args = make()
    assert_close(execute(h, {}, args, device)[0].cpu(), fn(*args))


def test_backend_mm_read_elsewhere_stays():
    """The flat mm's output also returned (as a training forward saves it): it is not computed twice."""
    def fn(x, w):
        y = x.view(14, 48) @ w.t()
        return y.view(2, 7, 40), y

    g, _ = capture_aten(fn, (torch.randn(2, 7, 48), torch.randn(40, 48)))
    h = run(g, upto("unflatten_linear"))
    assert "unflatten_linear" not in stats(h) and "aten.mm.default" in targets(h)

"""fuse_pointwise: chains of elementwise ATen ops (with broadcasting operands) -> one pointwise kernel each;
a value read outside the chain splits it. Property test: random expression DAGs over the rule table fuse
into one kernel and equal eager."""

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pass_helpers import Fn, capture, check_numbers, count, kernels, run, stats, targets

from ds4c.ir import op_of
from ds4c.passes.pointwise import fuse_pointwise

W = {"w": torch.randn(1)}


def test_chain_becomes_one_kernel(device):
    mod = Fn(lambda m, x, y: torch.sigmoid(torch.exp(x) * 2 - y) + 1, **W)
    args = (torch.randn(7, 48), torch.randn(7, 48))
    g, state = capture(mod, args)
    h = run(g, [fuse_pointwise])
    assert stats(h)["fuse_pointwise"] == 1 and stats(h)["fuse_pointwise.ops_fused"] == 5
    assert targets(h) == ["kernel:pointwise"]
    check_numbers(h, state, mod, (torch.randn(7, 48), torch.randn(7, 48)), device)


def test_broadcast_operands(device):
    mod = Fn(lambda m, x, b, c, s: F.silu(x + b) * c - s, **W)

    def args():
        return torch.randn(2, 7, 48), torch.randn(48), torch.randn(2, 7, 1), torch.randn(())

    g, state = capture(mod, args())
    h = run(g, [fuse_pointwise])
    assert targets(h) == ["kernel:pointwise"]
    k = op_of(h, next(n for n in h if op_of(h, n).is_kernel))
    assert [i["strides"] for i in k.problem["inputs"]] == [[336, 48, 1], [0, 0, 1], [7, 1, 0], [0, 0, 0]]
    check_numbers(h, state, mod, args(), device)


def test_external_reader_in_the_middle_splits(device):
    def fn(m, x):
        a = torch.tanh(x * 2)
        return torch.exp(a) + 1, a  # a is also an output: it must be stored

    mod = Fn(fn, **W)
    g, state = capture(mod, (torch.randn(7, 48),))
    h = run(g, [fuse_pointwise])
    assert stats(h)["fuse_pointwise"] == 2 and count(h, "kernel:pointwise") == 2
    check_numbers(h, state, mod, (torch.randn(7, 48),), device)


def test_non_pointwise_reader_splits(device):
    def fn(m, x):
        a = torch.relu(x - 0.5)
        return (a * 3).neg() + a.sum(-1, keepdim=True)

    mod = Fn(fn, **W)
    g, state = capture(mod, (torch.randn(7, 48),))
    h = run(g, [fuse_pointwise])
    assert kernels(h) == ["pointwise", "pointwise"] and count(h, "aten.sum.dim_IntList") == 1
    check_numbers(h, state, mod, (torch.randn(7, 48),), device)


def test_integer_ops_stay_aten():
    mod = Fn(lambda m, i: (i * 2 + 1).float() * 0.5, **W)
    g, _ = capture(mod, (torch.arange(12).view(3, 4),))
    h = run(g, [fuse_pointwise])
    assert count(h, "aten.mul.Tensor") + count(h, "aten.add.Tensor") >= 2  # the int64 part stays on ATen


# --- property test over the rule table -----------------------------------------------------------------

UNARY = {"neg": torch.neg, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "abs": torch.abs,
         "sin": torch.sin, "cos": torch.cos, "silu": F.silu, "gelu": F.gelu,
         "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "exp_tanh": lambda x: torch.exp(torch.tanh(x)),
         "rsqrt1p": lambda x: torch.rsqrt(x * x + 1), "sq": lambda x: x.pow(2), "cube": lambda x: x.pow(3),
         "recip": lambda x: 1 / (x.abs() + 1)}
BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "max": torch.maximum, "min": torch.minimum,
          "div": torch.div,  # only by a scalar or an input leaf, which _inputs keeps in [0.5, 1.5)
          "add_alpha": lambda a, b: torch.add(a, b, alpha=0.5) if isinstance(b, torch.Tensor) else a + b}


@st.composite
def programs(draw):
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.sampled_from([1, 3, 5, 7]), min_size=rank, max_size=rank)))
    leaves = [shape]  # input 0 has the full shape; others broadcast to it
    steps = []  # (op, a, b) with a an index into values (full shape), b a value, a new leaf or a scalar
    n_values = 1
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            steps.append(("u", draw(st.sampled_from(sorted(UNARY))), draw(st.integers(0, n_values - 1)), None))
        else:
            op = draw(st.sampled_from(sorted(BINARY)))
            a = draw(st.integers(0, n_values - 1))
            kinds = {"max": ["value", "leaf"], "min": ["value", "leaf"], "div": ["leaf", "scalar"]}.get(
                op, ["value", "leaf", "scalar"])
            kind = draw(st.sampled_from(kinds))
            if kind == "value":
                b = ("v", draw(st.integers(0, n_values - 1)))
            elif kind == "scalar":
                b = ("s", draw(st.sampled_from([0.5, 2.0, -3.0])))
            else:
                drop = draw(st.integers(0, rank))
                bshape = tuple(s if draw(st.booleans()) else 1 for s in shape[drop:])
                leaves.append(bshape)
                b = ("l", len(leaves) - 1)
            steps.append(("b", op, a, b))
        n_values += 1
    return shape, leaves, steps


def _inputs(leaves):
    """Input 0 (full shape) is N(0, 1); broadcast leaves are in [0.5, 1.5), safe to divide by."""
    return (torch.randn(leaves[0]),) + tuple(torch.rand(s) + 0.5 for s in leaves[1:])


def _evaluate(steps, inputs):
    values = [inputs[0]]
    used = set()
    for kind, op, a, b in steps:
        used.add(a)
        if kind == "u":
            values.append(UNARY[op](values[a]))
            continue
        if b[0] == "v":
            used.add(b[1])
            rhs = values[b[1]]
        else:
            rhs = b[1] if b[0] == "s" else inputs[b[1]]
        values.append(BINARY[op](values[a], rhs))
    out = values[-1]
    for i, v in enumerate(values[:-1]):  # every value reaches the output: one kernel, no dead roots
        if i not in used:
            out = out + v
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(programs())
def test_random_expressions_fuse_into_one_kernel(device, program):
    shape, leaves, steps = program
    mod = Fn(lambda m, *xs: _evaluate(steps, xs), **W)
    g, state = capture(mod, _inputs(leaves))
    h = run(g, [fuse_pointwise])
    assert kernels(h) == ["pointwise"], targets(h)
    assert targets(h) == ["kernel:pointwise"]
    check_numbers(h, state, mod, _inputs(leaves), device, what=repr(steps))

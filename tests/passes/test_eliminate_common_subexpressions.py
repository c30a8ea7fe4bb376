"""eliminate_common_subexpressions: identical pure ATen nodes become the earliest one; in-place writes,
random ops and differing arguments keep nodes apart."""

import torch
from pass_helpers import Fn, capture, check_numbers, count, run, stats, targets

from ds4c.ir import Op, Ref, TensorType, add_node, verify
from ds4c.passes.cleanup import remove_noops
from ds4c.passes.cse import eliminate_common_subexpressions
from ds4c.passes.reinplace import reinplace_state_writes


def _layers(m, x, cos):
    for _ in range(3):  # as the Llama layers do: each casts the fp32 table to the activation dtype
        x = x * cos.to(x.dtype) + 1
    return x


def test_repeated_casts_become_one(device):
    mod = Fn(_layers, w=torch.randn(1))
    args = (torch.randn(7, 48, dtype=torch.bfloat16), torch.randn(7, 48))
    g, state = capture(mod, args)
    assert count(g, "aten._to_copy.default") == 3
    h = run(g, [remove_noops, reinplace_state_writes, eliminate_common_subexpressions])
    assert stats(h)["eliminate_common_subexpressions"] == 2
    assert count(h, "aten._to_copy.default") == 1 and count(h, "aten.mul.Tensor") == 3
    check_numbers(h, state, mod, (torch.randn(7, 48, dtype=torch.bfloat16), torch.randn(7, 48)), device)


def test_chains_merge_transitively(device):
    mod = Fn(lambda m, x: torch.exp(x * 2) + torch.exp(x * 2) * torch.exp(x * 3), w=torch.randn(1))
    g, state = capture(mod, (torch.randn(5, 9),))
    h = run(g, [eliminate_common_subexpressions])
    # mul(x, 2) merges, then exp(mul) reads one node and merges too; mul(x, 3) differs
    assert stats(h)["eliminate_common_subexpressions"] == 2
    assert targets(h).count("aten.exp.default") == 2 and targets(h).count("aten.mul.Tensor") == 3
    check_numbers(h, state, mod, (torch.randn(5, 9),), device)


def test_scalar_types_and_kwargs_distinguish():
    mod = Fn(lambda m, x: (x + 1, x + 1.0, x.sum(0), x.sum(1), x.sum(-1)), w=torch.randn(1))
    g, _ = capture(mod, (torch.randn(5, 9),))
    h = run(g, [eliminate_common_subexpressions])
    assert "eliminate_common_subexpressions" not in stats(h)
    assert targets(h) == targets(g)


def _tt(*shape):
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= s
    return TensorType(shape, torch.float32, tuple(reversed(stride)))


def _graph_with_write_between():
    """buf -> mul(buf, 2) ; index_copy_(buf, ...) ; mul(buf, 2) again after the write."""
    import networkx as nx

    g = nx.DiGraph()
    g.graph.update(inputs=[], roles={}, outputs=[], mutations={}, stats={})
    buf = add_node(g, "buf", Op("input", outputs=(_tt(4, 8),)), 0.0)
    src = add_node(g, "src", Op("input", outputs=(_tt(1, 8),)), 1.0)
    idx = add_node(g, "idx", Op("input", outputs=(TensorType((1,), torch.int64, (1,)),)), 2.0)
    g.graph["inputs"] = [buf, src, idx]
    g.graph["roles"] = {buf: "buffer:cache", src: "user", idx: "user"}
    a = add_node(g, "a", Op("aten.mul.Tensor", args=(Ref(buf), 2), outputs=(_tt(4, 8),)), 3.0)
    w = add_node(g, "w", Op("aten.index_copy_.default", args=(Ref(buf), 0, Ref(idx), Ref(src)),
                            outputs=(_tt(4, 8),)), 4.0)
    b = add_node(g, "b", Op("aten.mul.Tensor", args=(Ref(w), 2), outputs=(_tt(4, 8),)), 5.0)
    g.graph["outputs"] = [Ref(a), Ref(b)]
    g.graph["mutations"] = {"buffer:cache": Ref(w)}
    return g


def test_reads_of_state_written_in_place_stay_apart():
    g = _graph_with_write_between()
    verify(g)
    h = run(g, [eliminate_common_subexpressions])
    assert "eliminate_common_subexpressions" not in stats(h)
    assert targets(h) == targets(g)


def test_random_ops_stay_apart():
    g = _graph_with_write_between()
    x = g.graph["inputs"][1]
    r1 = add_node(g, "r1", Op("aten.rand_like.default", args=(Ref(x),), outputs=(_tt(1, 8),)), 6.0)
    r2 = add_node(g, "r2", Op("aten.rand_like.default", args=(Ref(x),), outputs=(_tt(1, 8),)), 7.0)
    g.graph["outputs"] = g.graph["outputs"] + [Ref(r1), Ref(r2)]
    h = run(g, [eliminate_common_subexpressions])
    assert count(h, "aten.rand_like.default") == 2


def test_fresh_tensors_written_in_place_stay_apart():
    """z1 = zeros; z2 = zeros; index_copy_(z2, ...): merging z2 into z1 would let the write reach z1's reader."""
    g = _graph_with_write_between()
    idx, src = Ref(g.graph["inputs"][2]), Ref(g.graph["inputs"][1])
    z1 = add_node(g, "z1", Op("aten.zeros.default", args=((4, 8),), outputs=(_tt(4, 8),)), 6.0)
    z2 = add_node(g, "z2", Op("aten.zeros.default", args=((4, 8),), outputs=(_tt(4, 8),)), 7.0)
    w2 = add_node(g, "w2", Op("aten.index_copy_.default", args=(Ref(z2), 0, idx, src), outputs=(_tt(4, 8),)), 8.0)
    r1 = add_node(g, "r1", Op("aten.mul.Tensor", args=(Ref(z1), 2), outputs=(_tt(4, 8),)), 9.0)
    g.graph["outputs"] = g.graph["outputs"] + [Ref(w2), Ref(r1)]
    verify(g)
    h = run(g, [eliminate_common_subexpressions])
    assert count(h, "aten.zeros.default") == 2 and "eliminate_common_subexpressions" not in stats(h)

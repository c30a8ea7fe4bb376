"""reinplace_state_writes: a KV-cache index_copy whose result is the buffer's new value becomes index_copy_
(one position written, not the whole cache copied); declined when the old value is read after the write."""

import networkx as nx
import torch
from pass_helpers import capture, count, execute, run, stats, targets
from torch import nn

from ds4c.ir import Op, Ref, TensorType, add_node, verify
from ds4c.passes.cleanup import remove_noops
from ds4c.passes.reinplace import reinplace_state_writes


class Cache(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(1, 2, 11, 16), persistent=False)

    def forward(self, k, pos):
        self.k_cache.index_copy_(2, pos, k)
        return self.k_cache.sum(-1) * 2


def test_kv_write_becomes_in_place(device):
    mod = Cache()
    k, pos = torch.randn(1, 2, 3, 16), torch.tensor([4, 5, 6])
    g, state = capture(mod, (k, pos))
    assert count(g, "aten.index_copy.default") == 1 and list(g.graph["mutations"]) == ["buffer:k_cache"]
    h = run(g, [remove_noops, reinplace_state_writes])
    assert stats(h)["reinplace_state_writes"] == 1
    assert count(h, "aten.index_copy_.default") == 1 and count(h, "aten.index_copy.default") == 0
    # the compiled graph writes the same cache and returns the same values as eager
    state = {"buffer:k_cache": torch.randn(1, 2, 11, 16, device=device)}  # the executable writes into it
    mod.k_cache.copy_(state["buffer:k_cache"].cpu())
    k, pos = torch.randn(1, 2, 3, 16), torch.tensor([0, 7, 10])
    (out,) = execute(h, state, (k, pos), device)
    ref = mod(k, pos)
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(state["buffer:k_cache"].cpu(), mod.k_cache)


def _tt(*shape, dtype=torch.float32):
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= s
    return TensorType(shape, dtype, tuple(reversed(stride)))


def _graph(later_reader: bool):
    g = nx.DiGraph()
    g.graph.update(inputs=[], roles={}, outputs=[], mutations={}, stats={})
    buf = add_node(g, "buf", Op("input", outputs=(_tt(1, 2, 11, 16),)), 0.0)
    k = add_node(g, "k", Op("input", outputs=(_tt(1, 2, 1, 16),)), 1.0)
    pos = add_node(g, "pos", Op("input", outputs=(_tt(1, dtype=torch.int64),)), 2.0)
    g.graph["inputs"] = [buf, k, pos]
    g.graph["roles"] = {buf: "buffer:k_cache", k: "user", pos: "user"}
    early = add_node(g, "early", Op("aten.mul.Tensor", args=(Ref(buf), 2), outputs=(_tt(1, 2, 11, 16),)), 3.0)
    w = add_node(g, "w", Op("aten.index_copy.default", args=(Ref(buf), 2, Ref(pos), Ref(k)),
                            outputs=(_tt(1, 2, 11, 16),)), 4.0)
    outs = [Ref(early)]
    if later_reader:  # reads the old cache after the write: in place, it would see the new row
        late = add_node(g, "late", Op("aten.mul.Tensor", args=(Ref(buf), 3), outputs=(_tt(1, 2, 11, 16),)), 5.0)
        outs.append(Ref(late))
    g.graph["outputs"] = outs
    g.graph["mutations"] = {"buffer:k_cache": Ref(w)}
    verify(g)
    return g


def test_earlier_readers_allow_the_rewrite():
    h = run(_graph(later_reader=False), [reinplace_state_writes])
    assert stats(h)["reinplace_state_writes"] == 1
    assert targets(h) == ["aten.mul.Tensor", "aten.index_copy_.default"]


def test_declines_when_old_value_is_read_after_the_write():
    g = _graph(later_reader=True)
    h = run(g, [reinplace_state_writes])
    assert "reinplace_state_writes" not in stats(h)
    assert targets(h) == targets(g)


def test_declines_when_result_is_not_the_buffers_value():
    g = _graph(later_reader=False)
    g.graph["mutations"] = {}
    g.graph["outputs"] = [Ref("w")]
    h = run(g, [reinplace_state_writes])
    assert count(h, "aten.index_copy.default") == 1 and "reinplace_state_writes" not in stats(h)

"""remove_noops and eliminate_dead_code: identity ops and unread nodes disappear, numbers stay."""

import torch
from pass_helpers import Fn, capture, check_numbers, count, run, stats, targets

from ds4c.ir import Op, Ref, add_node, out_type
from ds4c.passes.cleanup import eliminate_dead_code, remove_noops
from ds4c.pipeline import default_passes


def _noisy(m, x):
    y = x.clone().to(torch.float32).view(7, 48).contiguous()  # all identities on an fp32 [7, 48] input
    return (y * m.w).reshape(7, 48).to(torch.float32) + 1


def test_identities_removed(device):
    mod = Fn(_noisy, w=torch.randn(48))
    g, state = capture(mod, (torch.randn(7, 48),))
    assert count(g, "aten.clone.default") == 1 and count(g, "aten.view.default") == 2
    h = run(g, [remove_noops])
    assert stats(h)["remove_noops"] == 3  # clone, view(7, 48), reshape(7, 48)
    assert targets(h) == ["aten.mul.Tensor", "aten.add.Tensor"]
    check_numbers(h, state, mod, (torch.randn(7, 48),), device)


def test_changing_views_and_casts_stay():
    mod = Fn(lambda m, x: (x.view(48, 7).to(torch.float64) * 2).reshape(-1), w=torch.randn(1))
    g, _ = capture(mod, (torch.randn(7, 48),))
    h = run(g, [remove_noops])
    assert "remove_noops" not in stats(h)
    assert targets(h) == targets(g)


def test_dead_code_removed_and_counted():
    mod = Fn(_noisy, w=torch.randn(48))
    g, _ = capture(mod, (torch.randn(7, 48),))
    x = Ref(g.graph["inputs"][-1])
    t = out_type(g, x)
    e = add_node(g, "dead_exp", Op("aten.exp.default", args=(x,), outputs=(t,)), 100.0)
    add_node(g, "dead_mul", Op("aten.mul.Tensor", args=(Ref(e), 3), outputs=(t,)), 101.0)
    h = run(g, [eliminate_dead_code])
    assert count(h, "aten.exp.default") == 0 and stats(h)["eliminate_dead_code"] == 2
    assert targets(h) == targets(g)[:-2]


def _heads_back(m, x):
    """Multi-head attention's spelling: heads of a packed projection transposed, made contiguous, viewed."""
    y = (x @ m.w).view(5, 4, 16).transpose(0, 1).contiguous()  # [4, 5, 16], a copy into the heads-major layout
    return y.view(4, 80) * 2


def test_a_copy_into_another_layout_stays(device):
    """`.contiguous()` of a transposed value is a clone that changes the layout, and the view after it needs
    that layout: removing it once left the view and a later kernel with strides the tensor did not have."""
    mod = Fn(_heads_back, w=torch.randn(64, 64))
    g, state = capture(mod, (torch.randn(5, 64),))
    assert count(g, "aten.clone.default") == 1
    h = run(g, [remove_noops])
    assert count(h, "aten.clone.default") == 1
    check_numbers(run(g, default_passes("bf16")), state, mod, (torch.randn(5, 64),), device)

"""select_rows_early: a selection of rows moves up through row-wise ops (matmuls, pointwise, norms, views),
stops at values other ops read in full and at ops that mix rows; the graph still gives eager's numbers."""

import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, run, stats

from ds4c.ir import op_of, ordered
from ds4c.passes.cleanup import remove_noops
from ds4c.passes.rows import select_rows_early

K, N, R = 24, 40, 9  # hidden, FFN width, rows (odd sizes)


def _params():
    return {"w1": torch.randn(N, K) / K**0.5, "w2": torch.randn(N, K) / K**0.5, "w3": torch.randn(K, N) / N**0.5,
            "g": torch.rand(K) + 0.5}


def _block(m, x):
    """A residual FFN block and an RMSNorm, each row computed from the same row of x."""
    y = x + F.linear(F.silu(F.linear(x, m.w1)) * F.linear(x, m.w2), m.w3)
    h = y.float()
    return m.g * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(y.dtype)


def _rows_of(g, target):
    """The row count (dim -2) of every output of target, in graph order."""
    return [op_of(g, n).outputs[0].shape[-2] for n in ordered(g) if op_of(g, n).target == target]


def test_index_select_moves_above_the_block(device):
    mod = Fn(lambda m, x, idx: _block(m, x).index_select(1, idx), **_params())
    g, state = capture(mod, (torch.randn(2, R, K), torch.tensor([R - 1, 0])))
    h = run(g, [remove_noops, select_rows_early])
    assert stats(h)["select_rows_early"] > 0
    # the three matmuls run on the selected rows; the only select left reads x
    assert _rows_of(h, "aten.linear.default") == [2, 2, 2]
    sel = [n for n in ordered(h) if op_of(h, n).target == "aten.index_select.default"]
    assert len(sel) == 1 and op_of(h, op_of(h, sel[0]).args[0].node).target == "input"
    for idx in ([3, 0], [R - 1, R - 1], [5, 6]):
        check_numbers(h, state, mod, (torch.randn(2, R, K), torch.tensor(idx)), device)


def test_slice_of_the_last_rows_moves_too(device):
    """Hugging Face's logits_to_keep: hidden[:, -k:] before the head."""
    mod = Fn(lambda m, x: F.linear(_block(m, x)[:, -3:], m.w1), **_params())
    g, state = capture(mod, (torch.randn(1, R, K),))
    h = run(g, [remove_noops, select_rows_early])
    assert stats(h)["select_rows_early"] > 0
    assert _rows_of(h, "aten.linear.default") == [3, 3, 3, 3]
    check_numbers(h, state, mod, (torch.randn(1, R, K),), device)


def test_operands_broadcast_along_the_rows_are_read_whole(device):
    """x + mean over the rows: the mean (one row, broadcast) is computed in full, x is selected."""
    mod = Fn(lambda m, x, idx: (F.linear(x, m.w1) + F.linear(x, m.w1).mean(1, keepdim=True)).index_select(1, idx),
             **_params())
    g, state = capture(mod, (torch.randn(2, R, K), torch.tensor([1])))
    h = run(g, [remove_noops, select_rows_early])
    assert stats(h)["select_rows_early"] >= 1
    assert _rows_of(h, "aten.linear.default") == [R, 1]
    check_numbers(h, state, mod, (torch.randn(2, R, K), torch.tensor([R - 2])), device)


def test_values_read_in_full_keep_their_rows(device):
    """y is also summed over every row: nothing above y may lose rows, so nothing moves."""
    def fn(m, x, idx):
        y = _block(m, x)
        return y.index_select(1, idx), y.sum()

    mod = Fn(fn, **_params())
    g, state = capture(mod, (torch.randn(2, R, K), torch.tensor([0])))
    h = run(g, [remove_noops, select_rows_early])
    assert "select_rows_early" not in stats(h)
    check_numbers(h, state, mod, (torch.randn(2, R, K), torch.tensor([4])), device)


def test_ops_that_mix_rows_stop_the_selection(device):
    """softmax and cumsum along the rows read every row to compute one: the select stays below them, while
    the matmul after them takes the selected rows."""
    for mix in (lambda t: torch.softmax(t, dim=1), lambda t: torch.cumsum(t, dim=1)):
        mod = Fn(lambda m, x, idx, mix=mix: F.linear(mix(F.linear(x, m.w1)), m.w3).index_select(1, idx),
                 **_params())
        g, state = capture(mod, (torch.randn(2, R, K), torch.tensor([2])))
        h = run(g, [remove_noops, select_rows_early])
        assert stats(h)["select_rows_early"] == 1
        assert _rows_of(h, "aten.linear.default") == [R, 1]
        check_numbers(h, state, mod, (torch.randn(2, R, K), torch.tensor([R - 1])), device)


def test_rows_move_through_transposes_and_views(device):
    """[B, H, T, D] -> transpose -> view [B, T, H*D] -> linear -> rows of T: the select lands on dim 2 of
    the [B, H, T, D] value (attention's output in a decoder)."""
    w = torch.randn(K, 4 * 6) / 24**0.5

    def fn(m, a, idx):
        return F.linear((a * 2).transpose(1, 2).reshape(1, R, 24), m.w).index_select(1, idx)

    mod = Fn(fn, w=w)
    g, state = capture(mod, (torch.randn(1, 4, R, 6), torch.tensor([R - 1])))
    h = run(g, [remove_noops, select_rows_early])
    sel = [op_of(h, n) for n in ordered(h) if op_of(h, n).target == "aten.index_select.default"]
    assert [(op.args[1], op.outputs[0].shape) for op in sel] == [(2, (1, 4, 1, 6))]
    check_numbers(h, state, mod, (torch.randn(1, 4, R, 6), torch.tensor([3])), device)


def test_rows_move_through_a_flattening_of_batch_and_tokens(device):
    """[1, T, K] -> [T, K] -> mm -> [1, T, N], as aot_autograd writes a linear layer: row t of the flat
    matrix is row t of the batch of one."""

    def fn(m, x, idx):
        return (torch.mm(torch.relu(x).view(R, K), m.w1.t()).view(1, R, N) * 3).index_select(1, idx)

    mod = Fn(fn, **_params())
    g, state = capture(mod, (torch.randn(1, R, K), torch.tensor([R - 1])))
    h = run(g, [remove_noops, select_rows_early])
    assert _rows_of(h, "aten.mm.default") == [1]
    sel = [op_of(h, n) for n in ordered(h) if op_of(h, n).target == "aten.index_select.default"]
    assert len(sel) == 1 and op_of(h, sel[0].args[0].node).target == "input"
    check_numbers(h, state, mod, (torch.randn(1, R, K), torch.tensor([2])), device)

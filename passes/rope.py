"""Rotary embedding: x * cos + rotate_half(x) * sin (Hugging Face layout,
rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])) -> one `rope` kernel. Runs after clean-up, before the
pointwise fusion would split the pattern into pieces."""

from __future__ import annotations

import torch

from ds4c.ir import Graph, Op, Ref, bump, op_of, ordered, set_op

from .cleanup import copy_graph, eliminate_dead_code
from .match import target_of

FLOAT = {torch.float32, torch.float16, torch.bfloat16}
BIG = 2**62


def _half(g: Graph, ref, d: int):
    """(x, lo) when ref = slice(x, -1, lo, lo + D/2) or output i of split(x, D/2, -1) (x.chunk(2, -1))."""
    if target_of(g, ref) == "aten.split.Tensor":
        x, size = op_of(g, ref.node).args[:2]
        dim = op_of(g, ref.node).args[2] if len(op_of(g, ref.node).args) > 2 else op_of(g, ref.node).kw("dim", 0)
        rank = len(op_of(g, x.node).outputs[x.index].shape)
        if size != d // 2 or dim not in (-1, rank - 1) or ref.index > 1:
            return None
        return x, ref.index * (d // 2)
    if target_of(g, ref) != "aten.slice.Tensor":
        return None
    a = tuple(op_of(g, ref.node).args) + (0, None, None)[len(op_of(g, ref.node).args) - 1:]
    x, dim, lo, hi = a[0], a[1], a[2] or 0, BIG if a[3] is None else a[3]
    rank = len(op_of(g, x.node).outputs[x.index].shape)
    if dim not in (-1, rank - 1) or (lo, min(hi, d)) not in ((0, d // 2), (d // 2, d)):
        return None
    return x, lo


def match_rotate_half(g: Graph, ref) -> Ref | None:
    """x when ref = cat([neg(x[..., D/2:]), x[..., :D/2]], -1)."""
    if target_of(g, ref) != "aten.cat.default":
        return None
    op = op_of(g, ref.node)
    parts = op.args[0]
    d = op.outputs[0].shape[-1]
    dim = op.args[1] if len(op.args) > 1 else op.kw("dim", 0)
    if len(parts) != 2 or dim not in (-1, len(op.outputs[0].shape) - 1):
        return None
    if target_of(g, parts[0]) != "aten.neg.default":
        return None
    hi = _half(g, op_of(g, parts[0].node).args[0], d)
    lo = _half(g, parts[1], d)
    if hi is None or lo is None or hi[0] != lo[0] or hi[1] != d // 2 or lo[1] != 0:
        return None
    return hi[0]


def check_table(g: Graph, ref, t: int, d: int) -> bool:
    """A [.., T, D] table broadcast over the leading dims, contiguous over (T, D)."""
    if not isinstance(ref, Ref):
        return False
    tt = op_of(g, ref.node).outputs[ref.index]
    lead = tt.shape[:-2]
    return (tt.shape[-2:] == (t, d) and all(s == 1 for s in lead) and tt.stride[-1] == 1
            and (t == 1 or tt.stride[-2] == d) and tt.dtype in FLOAT)


def fuse_rope(g: Graph) -> Graph:
    """add(mul(x, cos), mul(rotate_half(x), sin)) -> rope(x, cos, sin)."""
    g = copy_graph(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target != "aten.add.Tensor" or op.kw("alpha", 1) != 1:
            continue
        a, b = op.args[:2]
        for m1, m2 in ((a, b), (b, a)):
            if target_of(g, m1) != "aten.mul.Tensor" or target_of(g, m2) != "aten.mul.Tensor":
                continue
            x_cos, x_rot = op_of(g, m1.node).args[:2], op_of(g, m2.node).args[:2]
            found = None
            for rot, sin in (x_rot, x_rot[::-1]):
                x = match_rotate_half(g, rot)
                if x is not None and x in x_cos:
                    cos = x_cos[1] if x_cos[0] == x else x_cos[0]
                    found = (x, cos, sin)
                    break
            if found is None:
                continue
            x, cos, sin = found
            xt = op_of(g, x.node).outputs[x.index]
            if len(xt.shape) != 4 or xt.dtype not in FLOAT or xt.stride[-1] != 1:
                continue
            bsz, h, t, d = xt.shape
            if not (check_table(g, cos, t, d) and check_table(g, sin, t, d)) or op.outputs[0].shape != xt.shape:
                continue
            ct = op_of(g, cos.node).outputs[cos.index]
            problem = {"B": bsz, "H": h, "T": t, "D": d, "dtype": str(xt.dtype).removeprefix("torch."),
                       "cos_dtype": str(ct.dtype).removeprefix("torch.")}
            out = op.outputs[0]
            if out.dtype != xt.dtype:
                continue
            set_op(g, name, Op("kernel:rope", args=(x, cos, sin), outputs=(out,), problem=problem,
                               fused=("mul", "slice", "neg", "cat", "mul", "add"), group="rope"))
            bump(g, "fuse_rope")
            break
    return eliminate_dead_code(g)

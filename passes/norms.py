"""Row reductions: the decomposed RMSNorm pattern -> one `rmsnorm` kernel; softmax -> `softmax` kernel.
Run after clean-up, before lower_linear (so fold_rmsnorm_into_matmul can later find the norms)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds4c.ir import Graph, Op, Ref, bump, op_of, ordered, set_op

from .cleanup import copy_graph, eliminate_dead_code
from .match import scalar, sole_user, target_of

CASTS = ("aten._to_copy.default", "aten.to.dtype")
FLOAT = {torch.float32, torch.float16, torch.bfloat16}


@dataclass(frozen=True)
class RMSNormMatch:
    x: Ref  # the input as the model holds it (before any upcast)
    w: Ref | None
    eps: float
    out: str  # the node whose value the kernel replaces
    nodes: tuple[str, ...]


def _other(args, one):
    a, b = args[:2]
    return b if a == one else a if b == one else None


def match_rmsnorm(g: Graph, mean: str) -> RMSNormMatch | None:
    """mean(pow(h, 2), [-1], keepdim) + eps -> rsqrt -> h * r [-> cast] [-> * w], h = x or cast(x)."""
    m = op_of(g, mean)
    if m.target != "aten.mean.dim" or not (len(m.args) >= 3 and m.args[2] is True or m.kw("keepdim")):
        return None
    sq = m.args[0]
    rank = len(op_of(g, sq.node).outputs[sq.index].shape)
    if tuple(m.args[1]) not in ((-1,), (rank - 1,)) or target_of(g, sq) != "aten.pow.Tensor_Scalar":
        return None
    h = op_of(g, sq.node).args[0]
    if op_of(g, sq.node).args[1] != 2 or sole_user(g, sq.node) != mean:
        return None
    add = sole_user(g, mean)
    if add is None or op_of(g, add).target != "aten.add.Tensor":
        return None
    eps = scalar(_other(op_of(g, add).args, Ref(mean)))
    rs = sole_user(g, add)
    if eps is None or rs is None or op_of(g, rs).target != "aten.rsqrt.default":
        return None
    mul = sole_user(g, rs)
    if mul is None or op_of(g, mul).target != "aten.mul.Tensor" or _other(op_of(g, mul).args, Ref(rs)) != h:
        return None
    nodes, out = [sq.node, mean, add, rs, mul], mul
    x = h
    if target_of(g, h) in CASTS and op_of(g, h.node).outputs[0].dtype == torch.float32:
        x = op_of(g, h.node).args[0]
        nodes.append(h.node)
    nxt = sole_user(g, out)
    if nxt is not None and op_of(g, nxt).target in CASTS:
        nodes.append(nxt)
        out = nxt
        nxt = sole_user(g, out)
    w = None
    if nxt is not None and op_of(g, nxt).target == "aten.mul.Tensor":
        cand = _other(op_of(g, nxt).args, Ref(out))
        xt = op_of(g, x.node).outputs[x.index]
        if isinstance(cand, Ref) and op_of(g, cand.node).outputs[cand.index].shape == (xt.shape[-1],):
            w, out = cand, nxt
            nodes.append(nxt)
    xt = op_of(g, x.node).outputs[x.index]
    if xt.dtype not in FLOAT or op_of(g, out).outputs[0].dtype != xt.dtype or xt.stride[-1] != 1:
        return None
    if w is None:
        return None  # a weightless norm: leave it to the pointwise fusion
    if any(n != h.node and sole_user(g, n) is None and n != out for n in nodes):
        return None
    return RMSNormMatch(x, w, eps, out, tuple(nodes))


def fuse_rmsnorm(g: Graph) -> Graph:
    """The decomposed RMSNorm (Llama style, fp32 statistics) -> one rmsnorm kernel."""
    g = copy_graph(g)
    for name in ordered(g):
        if name not in g:
            continue
        m = match_rmsnorm(g, name)
        if m is None:
            continue
        xt = op_of(g, m.x.node).outputs[m.x.index]
        rows = 1
        for s in xt.shape[:-1]:
            rows *= s
        problem = {"rows": rows, "cols": xt.shape[-1], "dtype": str(xt.dtype).removeprefix("torch."),
                   "w_dtype": str(op_of(g, m.w.node).outputs[m.w.index].dtype).removeprefix("torch."),
                   "eps": m.eps, "residual": False}
        fused = tuple(op_of(g, n).target for n in m.nodes)
        set_op(g, m.out, Op("kernel:rmsnorm", args=(m.x, m.w), outputs=op_of(g, m.out).outputs,
                            problem=problem, fused=fused, group="rmsnorm"))
        bump(g, "fuse_rmsnorm")
    return eliminate_dead_code(g)


def fuse_softmax(g: Graph) -> Graph:
    """softmax over the last dim (aten._softmax / softmax.int) -> softmax kernel."""
    g = copy_graph(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target not in ("aten._softmax.default", "aten.softmax.int"):
            continue
        x = op.args[0]
        xt = op_of(g, x.node).outputs[x.index]
        if op.args[1] not in (-1, len(xt.shape) - 1) or xt.dtype not in FLOAT or xt.stride[-1] != 1:
            continue
        if op.outputs[0].dtype != xt.dtype:
            continue
        rows = 1
        for s in xt.shape[:-1]:
            rows *= s
        problem = {"rows": rows, "cols": xt.shape[-1], "dtype": str(xt.dtype).removeprefix("torch."),
                   "scale": 1.0}
        set_op(g, name, Op("kernel:softmax", args=(x,), outputs=op.outputs, problem=problem,
                           fused=(op.target,), group="softmax"))
        bump(g, "fuse_softmax")
    return eliminate_dead_code(g)




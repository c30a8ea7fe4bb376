"""Rows nobody reads are not computed: a selection of rows (`index_select` of the prompt's last position, or a
`slice` of the last tokens, as a Hugging Face model's `logits_to_keep` writes it) moves up through every op
that computes each row from the same row of its inputs (pointwise ops, casts, matmuls, reductions over other
dims, views that keep the row dim), so those ops run on the selected rows alone. In a decoder's prefill the
last layer's o-projection, FFN and norms then run on one row instead of T: GEMV-sized, where they were the
largest GEMMs of the layer.

A selection moves above an op only where every reader of that op takes the same rows: a value that other
ops read in full (the residual stream entering the last layer, attention's output) keeps its select.
Runs at the ATen level after the clean-ups and CSE, before the fusions, which then see the smaller shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ds4c.ir import (
    Graph,
    Op,
    Ref,
    add_node,
    bump,
    is_live_out,
    op_of,
    ordered,
    refs_in,
    remove_dead,
    replace_uses,
    users,
)

from .cleanup import copy_graph
from .match import RESHAPES, op_overload, prod, shape, typed

_CASTS = {"aten._to_copy.default", "aten.to.dtype"}
_REDUCTIONS = {"aten.mean.dim", "aten.sum.dim_IntList", "aten.amax.default", "aten.amin.default"}
_MATMULS = {"aten.linear.default", "aten.mm.default", "aten.matmul.default", "aten.addmm.default"}


@dataclass(frozen=True)
class Rows:
    """A selection of rows along one dim: ("index_select", idx Ref) or ("slice", start, end, step)."""

    kind: str
    params: tuple

    def apply(self, x: Ref, dim: int) -> Op:
        """The op that selects these rows of x along dim (its output type filled in by typed())."""
        if self.kind == "index_select":
            return Op("aten.index_select.default", args=(x, dim, self.params[0]))
        return Op("aten.slice.Tensor", args=(x, dim) + self.params)


def as_selection(g: Graph, name: str) -> tuple[Ref, int, Rows] | None:
    """(source, dim, rows) when node name selects rows of a tensor, else None."""
    op = op_of(g, name)
    if not op.args or not isinstance(op.args[0], Ref) or op.kwargs:
        return None
    x = op.args[0]
    rank = len(shape(g, x))
    if op.target == "aten.index_select.default" and isinstance(op.args[2], Ref):
        return x, op.args[1] % rank, Rows("index_select", (op.args[2],))
    if op.target == "aten.slice.Tensor" and len(op.args) >= 2:
        params = tuple(op.args[2:]) + (None, None, 1)[len(op.args) - 2:]
        return x, op.args[1] % rank, Rows("slice", params)
    return None


def _pointwise(target: str) -> bool:
    """A cast, or an operator torch tags pointwise that writes none of its arguments."""
    if target in _CASTS:
        return True
    op = op_overload(target)
    if op is None or op._schema.is_mutable:
        return False
    return torch.Tag.pointwise in op.tags and torch.Tag.nondeterministic_seeded not in op.tags


def _reduced_dims(op: Op, rank: int) -> tuple[set[int], bool]:
    dims = op.args[1] if len(op.args) > 1 else op.kw("dim")
    keep = op.args[2] if len(op.args) > 2 else op.kw("keepdim", False)
    if dims is None or dims == []:
        dims = range(rank)
    if isinstance(dims, int):
        dims = [dims]
    return {d % rank for d in dims}, bool(keep)


def input_dim(g: Graph, op: Op, dim: int) -> dict[int, int] | None:
    """For an op computing each row along output dim `dim` from the same row of some inputs: {argument
    position: the dim of that argument holding the rows}; arguments absent from it are read whole by every
    row (weights, broadcast operands). None for an op whose rows mix."""
    t = op.target
    if len(op.outputs) != 1 or refs_in([v for _, v in op.kwargs]):
        return None
    out = op.outputs[0].shape
    if _pointwise(t):
        picks = {}
        for i, a in enumerate(op.args):
            if not isinstance(a, Ref):
                continue
            s = shape(g, a)
            d = dim - (len(out) - len(s))
            if d < 0 or s[d] == 1:
                continue  # broadcast along the rows: every row reads it whole
            if s[d] != out[dim]:
                return None
            picks[i] = d
        return picks
    x = op.args[1] if t == "aten.addmm.default" else op.args[0]
    if not isinstance(x, Ref):
        return None
    xs = shape(g, x)
    if t in _MATMULS:
        if dim >= len(out) - 1 or len(xs) != len(out):
            return None
        if t == "aten.addmm.default":
            b = op.args[0]
            if isinstance(b, Ref) and len(shape(g, b)) == 2 and shape(g, b)[0] != 1:
                return {0: 0, 1: dim}
            return {1: dim}
        if t == "aten.matmul.default" and len(shape(g, op.args[1])) != 2:
            return None
        return {0: dim}
    if t in _REDUCTIONS:
        dims, keep = _reduced_dims(op, len(xs))
        kept = [d for d in range(len(xs)) if d not in dims]
        d = dim if keep else (kept[dim] if dim < len(kept) else None)
        return {0: d} if d is not None and d not in dims else None
    if t in RESHAPES:  # row r of out is row r of x where as many elements precede the rows in both
        d = _same_rows(xs, out, dim)
        return None if d is None else {0: d}
    if t == "aten.transpose.int":
        a, b = op.args[1] % len(xs), op.args[2] % len(xs)
        return {0: b if dim == a else a if dim == b else dim}
    if t == "aten.permute.default":
        return {0: op.args[1][dim] % len(xs)}
    return None


def _same_rows(xs: tuple[int, ...], out: tuple[int, ...], dim: int) -> int | None:
    """The dim of a reshape's input holding the rows of its output's dim `dim`: the one as long, with as many
    elements before it in row-major order (a [1, T, K] <-> [T, K] flattening keeps the rows)."""
    before = prod(out[:dim])
    return next((d for d in range(len(xs)) if xs[d] == out[dim] and prod(xs[:d]) == before), None)


def _reshaped(op: Op, dim: int, n: int) -> Op:
    """A reshape op whose target shape has n rows along dim."""
    size = list(op.args[1])
    size[dim] = n
    return replace(op, args=(op.args[0], size) + tuple(op.args[2:]))


def _select(g: Graph, a: Ref, dim: int, rows: Rows, before: float) -> tuple[Ref, bool]:
    """(a node selecting rows of a along dim ordered before `before`, whether it is new): an existing one is
    reused (moved earlier where needed: it only reads a and the index, both ordered before `before`)."""
    low = max(g.nodes[r.node]["order"] for r in (a,) + tuple(r for r in rows.params if isinstance(r, Ref)))
    for u in users(g, a.node):
        if as_selection(g, u) == (a, dim, rows):
            g.nodes[u]["order"] = min(g.nodes[u]["order"], (low + before) / 2)
            return Ref(u), False
    return Ref(add_node(g, f"{a.node}_rows", typed(g, rows.apply(a, dim)), (low + before) / 2)), True


def _push(g: Graph, src: str, dim: int, rows: Rows, selects: list[str]) -> bool:
    """Compute src on the selected rows only and let every select read that instead."""
    op = op_of(g, src)
    picks = input_dim(g, op, dim)
    if picks is None:
        return False
    first = min(g.nodes[s]["order"] for s in selects)
    args, made = list(op.args), []
    try:  # an op whose meta function refuses the smaller shapes keeps its rows
        for i, d in picks.items():
            args[i], new = _select(g, args[i], d, rows, first)
            if new:
                made.append(args[i].node)
        moved = replace(op, args=tuple(args))
        if moved.target in RESHAPES:
            moved = _reshaped(moved, dim, op_of(g, selects[0]).outputs[0].shape[dim])
        moved = typed(g, moved)
        want = op_of(g, selects[0]).outputs[0]
        if (moved.outputs[0].shape, moved.outputs[0].dtype) != (want.shape, want.dtype):
            raise ValueError("the smaller op broadcasts differently")
    except (RuntimeError, ValueError, TypeError, IndexError):
        g.remove_nodes_from(made)
        return False
    ref = Ref(add_node(g, f"{src}_rows", moved, first))
    for s in selects:
        replace_uses(g, Ref(s), ref)
    return True


def select_rows_early(g: Graph) -> Graph:
    """Move row selections up through the ops that compute rows independently; needs remove_noops."""
    g = copy_graph(g)
    changed = True
    while changed:
        changed = False
        for name in ordered(g):
            if name not in g:
                continue
            sel = as_selection(g, name)
            if sel is None:
                continue
            x, dim, rows = sel
            src = x.node
            if x.index != 0 or is_live_out(g, src) or op_of(g, src).target == "input":
                continue
            if op_of(g, name).outputs[0].shape[dim] == shape(g, x)[dim]:
                continue  # all rows: nothing to save
            readers = users(g, src)
            same = [u for u in readers if as_selection(g, u) == (x, dim, rows)]
            if len(same) != len(readers) or not _push(g, src, dim, rows, same):
                continue
            bump(g, "select_rows_early")
            remove_dead(g)  # the selects just bypassed, so the next look at src sees its live readers
            for i, n in enumerate(ordered(g)):  # room between any two nodes for the next selects
                g.nodes[n]["order"] = float(i)
            changed = True
            break
    return g

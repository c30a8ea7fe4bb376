"""Clean-up passes: drop ops that compute nothing and nodes nothing reads. Run first, and last."""

from __future__ import annotations

from ds4c.ir import Graph, Ref, bump, op_of, ordered, remove_dead, replace_uses

from .match import dtype, shape


def _is_noop(g: Graph, name: str) -> bool:
    op = op_of(g, name)
    if not op.args or not isinstance(op.args[0], Ref):
        return False
    x = op.args[0]
    t = op.target
    same_layout = op.outputs[0] == op_of(g, x.node).outputs[x.index]  # a copy into another layout is not an identity
    if t in ("aten.alias.default", "aten.detach.default"):
        return True
    if t in ("aten.clone.default", "aten.lift_fresh_copy.default"):
        return same_layout
    if t == "aten.contiguous.default":
        return op_of(g, x.node).outputs[x.index].is_contiguous()
    if t in ("aten.to.dtype", "aten._to_copy.default", "aten.to.dtype_layout"):
        want = op.kw("dtype", op.args[1] if len(op.args) > 1 and t == "aten.to.dtype" else None)
        return want in (None, dtype(g, x)) and op.kw("device") is None and same_layout
    if t in ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.expand.default"):
        return tuple(op.outputs[0].shape) == shape(g, x)
    return False


def remove_noops(g: Graph) -> Graph:
    """Drop identity ops (clones and same-dtype casts that keep the layout, same-shape views); needs nothing
    before it. A clone into another layout (`.contiguous()` of a transposed value) stays: the views after it
    rely on that layout."""
    g = copy_graph(g)
    for name in ordered(g):
        if _is_noop(g, name):
            replace_uses(g, Ref(name), op_of(g, name).args[0])
            bump(g, "remove_noops")
    remove_dead(g)
    return g


def eliminate_dead_code(g: Graph) -> Graph:
    """Remove nodes that no output or state mutation depends on."""
    g = copy_graph(g)
    n = remove_dead(g)
    if n:
        bump(g, "eliminate_dead_code", n)
    return g


def copy_graph(g: Graph) -> Graph:
    """A copy whose graph-level containers can be changed without touching g (passes stay pure)."""
    h = g.copy()
    h.graph = dict(g.graph)
    for k in ("outputs", "inputs"):
        h.graph[k] = list(g.graph[k])
    for k in ("mutations", "roles", "stats"):
        h.graph[k] = dict(g.graph[k])
    h.graph["derived"] = dict(g.graph.get("derived", {}))
    h.graph["notes"] = dict(g.graph.get("notes", {}))
    return h

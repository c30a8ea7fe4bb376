"""Turn functional writes into state (KV-cache `index_copy` whose result becomes the buffer's new value)
back into in-place writes, so a decode step writes one position instead of copying the whole cache.
Runs after clean-up, before any fusion."""

from __future__ import annotations

from dataclasses import replace

from ds4c.ir import Graph, Ref, bump, op_of, set_op, users

from .cleanup import copy_graph

# functional op -> in-place twin; rule: op(buf, ...) whose result is buf's new value -> op_(buf, ...)
_INPLACE = {
    "aten.index_copy.default": "aten.index_copy_.default",
    "aten.index_put.default": "aten.index_put_.default",
    "aten.copy.default": "aten.copy_.default",
}


def check_safe_to_reinplace(g: Graph, name: str, buf: Ref) -> bool:
    """Every other reader of the old buffer value runs before the write."""
    order = g.nodes[name]["order"]
    return all(u == name or g.nodes[u]["order"] < order for u in users(g, buf.node))


def reinplace_state_writes(g: Graph) -> Graph:
    """index_copy(buf, ...) -> index_copy_(buf, ...) where the result is buf's mutation; needs clean-up."""
    g = copy_graph(g)
    for state, ref in g.graph["mutations"].items():
        op = op_of(g, ref.node)
        if op.target not in _INPLACE or not op.args or not isinstance(op.args[0], Ref):
            continue
        buf = op.args[0]
        if op_of(g, buf.node).target != "input" or g.graph["roles"][buf.node] != state:
            continue
        if check_safe_to_reinplace(g, ref.node, buf):
            set_op(g, ref.node, replace(op, target=_INPLACE[op.target]))
            bump(g, "reinplace_state_writes")
    return g

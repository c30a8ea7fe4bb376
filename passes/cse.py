"""Common-subexpression elimination: pure ATen nodes computing the same thing from the same arguments become
one node (the earliest). The Llama graph casts the rope tables to the model dtype once per layer; after this
pass it is once per graph. Runs after reinplace_state_writes, before the pattern fusions (which then see one
shared producer instead of copies).
"""

from __future__ import annotations

from ds4c.ir import Graph, Ref, bump, op_of, op_refs, ordered, remove_dead, replace_uses

from .cleanup import copy_graph
from .match import see_through_views

# ATen ops whose result is not a function of their arguments: random draws and fresh uninitialised storage.
_IMPURE_NAMES = ("bernoulli", "dropout", "native_dropout", "normal", "uniform", "multinomial", "exponential",
                 "poisson", "randperm", "rrelu", "cauchy", "geometric", "log_normal", "empty", "empty_like",
                 "empty_strided", "new_empty", "new_empty_strided", "seed", "manual_seed")


def _op_name(target: str) -> str:
    return target.split(".")[1] if target.count(".") >= 2 else ""


def _hashable(value):
    """value with lists turned into tuples (and dicts into sorted item tuples), so it can key a dict."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (bool, int, float)):  # 1 == 1.0 == True and 0.0 == -0.0, but they differ as args
        return (type(value).__name__, repr(value))
    return value


def _written_in_place(g: Graph) -> set[str]:
    """Nodes whose value an in-place op overwrites (through any view), and the in-place ops themselves."""
    out = set()
    for name in g.nodes:
        op = op_of(g, name)
        if op.target.startswith("aten.") and _op_name(op.target).endswith("_") and op.args \
                and isinstance(op.args[0], Ref):
            out.add(name)
            out.add(see_through_views(g, op.args[0]).node)
    return out


def check_pure(g: Graph, node: str, written: set[str]) -> bool:
    """An ATen op with no side effect whose result depends only on its arguments, none of which is a value
    some in-place op overwrites (two reads of it may see different contents), and which is not itself
    overwritten later (sharing it would let the write reach the other copy's readers)."""
    op = op_of(g, node)
    name = _op_name(op.target)
    if node in written:
        return False
    if not op.target.startswith("aten.") or not name or name.endswith("_"):
        return False
    if "rand" in name or name in _IMPURE_NAMES:
        return False
    return all(see_through_views(g, r).node not in written for r in op_refs(op))


def eliminate_common_subexpressions(g: Graph) -> Graph:
    """Identical pure ATen nodes (same target, args, kwargs) -> the earliest one; needs reinplace first."""
    g = copy_graph(g)
    written = _written_in_place(g)
    seen: dict = {}
    merged = 0
    for name in ordered(g):
        op = op_of(g, name)  # read now: earlier merges may have rewritten this node's arguments
        if not check_pure(g, name, written):
            continue
        try:
            key = (op.target, _hashable(op.args), _hashable(op.kwargs), op.outputs)
            first = seen.setdefault(key, name)
        except TypeError:  # an argument that cannot be compared by value: leave the node alone
            continue
        if first == name:
            continue
        for i in range(len(op.outputs)):
            replace_uses(g, Ref(name, i), Ref(first, i))
        merged += 1
    if merged:
        remove_dead(g)
        bump(g, "eliminate_common_subexpressions", merged)
    return g

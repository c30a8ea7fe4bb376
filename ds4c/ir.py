"""The ds4c IR: a networkx DiGraph of tensor ops, built from an ATen-level FX graph (capture.py) and
rewritten by the passes (passes/), then lowered to a plan (lower.py).

Invariants, checked by `verify()` (between passes in tests, and under DS4C_VERIFY=1):
1. Every node carries `op` (an `Op`, frozen) and `order` (a float giving a stable topological order).
2. Every `Ref` in an op's arguments names a node of the graph and one of its outputs, and there is an edge
   from that node to the user; there are no other edges. The graph has no cycles.
3. Every node's `order` is larger than the order of each node it reads.
4. Graph inputs are nodes with target "input"; `graph["inputs"]` lists them in call order, each with a role
   in `graph["roles"]` ("user", "param:<state name>", "buffer:<state name>", "derived:<weight name>").
5. `graph["outputs"]` are Refs; `graph["mutations"]` maps a state name to the Ref of its new value.
6. No aliasing except where written down: an op whose target ends in "_" (aten in-place ops such as
   index_copy_) writes into its first argument and returns it; that argument must have no other reader
   ordered after the writer. Views (aten.view, transpose, slice, ...) alias their input and are only read.
7. Kernel nodes (target "kernel:<template>") carry a JSON-able `problem`; their `args` are the input Refs in
   the template's launch order; their outputs are fresh tensors, except that a kernel with `writes` = n > 0
   writes its first n args in place (KV caches) and returns them as its last n outputs, under rule 6.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import torch

Graph = nx.DiGraph


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: torch.dtype
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def is_contiguous(self) -> bool:
        expected, acc = [], 1
        for s in reversed(self.shape):
            expected.append(acc)
            acc *= s
        return all(sh == 1 or st == e for sh, st, e in zip(self.shape, self.stride, reversed(expected),
                                                           strict=True))


@dataclass(frozen=True)
class Ref:
    """Output `index` of node `node`."""

    node: str
    index: int = 0


@dataclass(frozen=True)
class Op:
    target: str  # "input", "aten.<op>.<overload>", "kernel:<template>"
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    outputs: tuple[TensorType, ...] = ()
    problem: dict | None = None  # kernel nodes only
    precision: str | None = None  # op class of the precision policy (ds4c/precision.py)
    fused: tuple[str, ...] = ()  # the ATen targets this kernel replaced, for the report
    group: str | None = None  # fusion group name shown by --report
    meta: tuple[tuple[str, Any], ...] = field(default=())  # small extra facts (e.g. scalar values)
    writes: int = 0  # kernel nodes: the first `writes` args are written in place (invariant 7)

    @property
    def is_kernel(self) -> bool:
        return self.target.startswith("kernel:")

    @property
    def template(self) -> str:
        return self.target.removeprefix("kernel:")

    def kw(self, name: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(name, default)


def refs_in(value: Any) -> list[Ref]:
    """Every Ref inside a nested argument structure, in order."""
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, (tuple, list)):
        return [r for v in value for r in refs_in(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    return []


def op_refs(op: Op) -> list[Ref]:
    return refs_in(op.args) + refs_in([v for _, v in op.kwargs])


def map_refs(value: Any, fn) -> Any:
    """Rebuild a nested argument structure with fn applied to every Ref."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_refs(v, fn) for v in value)
    if isinstance(value, list):
        return [map_refs(v, fn) for v in value]
    return value


def op_of(g: Graph, name: str) -> Op:
    return g.nodes[name]["op"]


def out_type(g: Graph, ref: Ref) -> TensorType:
    return op_of(g, ref.node).outputs[ref.index]


def users(g: Graph, name: str) -> list[str]:
    """Nodes reading any output of name, in graph order."""
    return sorted(g.successors(name), key=lambda n: g.nodes[n]["order"])


def graph_output_refs(g: Graph) -> list[Ref]:
    return list(g.graph["outputs"]) + list(g.graph["mutations"].values())


def is_live_out(g: Graph, name: str) -> bool:
    """True when a graph output or a state mutation reads node name."""
    return any(r.node == name for r in graph_output_refs(g))


def ordered(g: Graph) -> list[str]:
    """Nodes in their stable topological order."""
    return sorted(g.nodes, key=lambda n: g.nodes[n]["order"])


def add_node(g: Graph, name: str, op: Op, order: float) -> str:
    """Add node name (made unique) with edges from every node its Refs name."""
    base, i = name, 1
    while name in g:
        name = f"{base}_{i}"
        i += 1
    g.add_node(name, op=op, order=order)
    for r in op_refs(op):
        g.add_edge(r.node, name)
    return name


def set_op(g: Graph, name: str, op: Op) -> None:
    """Replace node name's op and rewire its incoming edges to the new op's Refs."""
    for pred in list(g.predecessors(name)):
        g.remove_edge(pred, name)
    g.nodes[name]["op"] = op
    for r in op_refs(op):
        g.add_edge(r.node, name)


def replace_uses(g: Graph, old: Ref, new: Ref) -> None:
    """Make every reader of old (ops, graph outputs, mutations) read new instead."""
    for u in list(g.successors(old.node)):
        op = op_of(g, u)
        if old in op_refs(op):
            set_op(g, u, replace(op, args=map_refs(op.args, lambda r: new if r == old else r),
                                 kwargs=tuple((k, map_refs(v, lambda r: new if r == old else r))
                                              for k, v in op.kwargs)))
    g.graph["outputs"] = [new if r == old else r for r in g.graph["outputs"]]
    g.graph["mutations"] = {k: (new if r == old else r) for k, r in g.graph["mutations"].items()}


def remove_dead(g: Graph) -> int:
    """Remove nodes nothing live reads (inputs and in-place writers into live state stay). Returns count."""
    live = {r.node for r in graph_output_refs(g)} | set(g.graph["inputs"])
    stack = list(live)
    while stack:
        n = stack.pop()
        for p in g.predecessors(n):
            if p not in live:
                live.add(p)
                stack.append(p)
    dead = [n for n in g.nodes if n not in live]
    g.remove_nodes_from(dead)
    return len(dead)


def bump(g: Graph, rule: str, n: int = 1) -> None:
    """Count how often a rewrite rule fired (shown by --report)."""
    stats = g.graph.setdefault("stats", {})
    stats[rule] = stats.get(rule, 0) + n


class IRError(AssertionError):
    pass


def verify(g: Graph) -> None:
    """Check the invariants in this module's docstring; raise IRError naming the first broken one."""
    for name, data in g.nodes(data=True):
        op = data.get("op")
        if not isinstance(op, Op) or "order" not in data:
            raise IRError(f"{name}: node lacks op or order")
        expect = {r.node for r in op_refs(op)}
        for r in op_refs(op):
            if r.node not in g:
                raise IRError(f"{name}: reads missing node {r.node}")
            if r.index >= len(op_of(g, r.node).outputs):
                raise IRError(f"{name}: reads output {r.index} of {r.node}, which has "
                              f"{len(op_of(g, r.node).outputs)}")
            if g.nodes[r.node]["order"] >= data["order"]:
                raise IRError(f"{name}: ordered before its input {r.node}")
        if set(g.predecessors(name)) != expect:
            raise IRError(f"{name}: edges {sorted(g.predecessors(name))} != refs {sorted(expect)}")
        if op.is_kernel and not isinstance(op.problem, dict):
            raise IRError(f"{name}: kernel node without a problem")
        if op.target.endswith("_") and op.target.startswith("aten."):
            _verify_inplace(g, name, op.args[0] if op.args else None)
        for i in range(op.writes):
            _verify_inplace(g, name, op.args[i] if i < len(op.args) else None)
            fresh = len(op.outputs) - op.writes
            if fresh < 0 or op.outputs[fresh + i] != op_of(g, op.args[i].node).outputs[op.args[i].index]:
                raise IRError(f"{name}: output {fresh + i} is not the type of the argument it writes")
    if not nx.is_directed_acyclic_graph(g):
        raise IRError("graph has a cycle")
    for n in g.graph["inputs"]:
        if n not in g or op_of(g, n).target != "input" or n not in g.graph["roles"]:
            raise IRError(f"input {n} missing or without a role")
    for r in graph_output_refs(g):
        if r.node not in g:
            raise IRError(f"output reads missing node {r.node}")


def _verify_inplace(g: Graph, name: str, target) -> None:
    if not isinstance(target, Ref):
        raise IRError(f"{name}: in-place op without a tensor to write")
    order = g.nodes[name]["order"]
    for u in g.successors(target.node):
        if u != name and g.nodes[u]["order"] > order:
            raise IRError(f"{name}: {u} reads {target.node} after it was written in place")


def maybe_verify(g: Graph) -> None:
    """verify() when DS4C_VERIFY=1 (read at call time)."""
    if os.environ.get("DS4C_VERIFY") == "1":
        verify(g)

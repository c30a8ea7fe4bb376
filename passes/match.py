"""Helpers the rewrite rules share: looking at producers, consumers and arguments of IR nodes."""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from ds4c.ir import Graph, Op, Ref, TensorType, is_live_out, op_of, out_type, users

RESHAPES = frozenset({"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default"})
VIEW_OPS = RESHAPES | {"aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims", "aten.expand.default",
            "aten.transpose.int", "aten.permute.default", "aten.slice.Tensor", "aten.t.default",
            "aten.alias.default", "aten.select.int"}


@functools.cache
def op_overload(target: str) -> torch._ops.OpOverload | None:
    """The torch operator "<namespace>.<op>.<overload>"; None for a name no registered operator has (a kernel,
    an op this torch lacks)."""
    try:
        ns, name, overload = target.split(".")
        return getattr(getattr(getattr(torch.ops, ns), name), overload)
    except (ValueError, AttributeError, RuntimeError):
        return None


def op_schema(target: str) -> torch.FunctionSchema | None:
    """The schema of op_overload(target), or None."""
    op = op_overload(target)
    return None if op is None else op._schema


def aliased_argument(target: str) -> int | None:
    """The position of the argument an op's outputs alias, as its schema annotates them (Tensor(a) in and
    out: a view, or an in-place op); None for an op that returns new tensors or has no schema."""
    schema = op_schema(target)
    if schema is None or not any(r.alias_info is not None for r in schema.returns):
        return None
    # "Tensor(a) self -> Tensor(a)", or split's "Tensor(a -> *) self -> Tensor(a)[]", whose list element
    # annotation the schema object does not show: the annotated positional argument
    return next((i for i, a in enumerate(schema.arguments) if not a.kwarg_only and a.alias_info is not None),
                None)


def tokens_major(t: TensorType) -> TensorType:
    """The contiguous [B, T, H, D] type of the values of a [B, H, T, D] tensor (heads and tokens swapped)."""
    b, h, n, d = t.shape
    return TensorType((b, n, h, d), t.dtype, (n * h * d, h * d, d, 1))


def producer(g: Graph, value) -> tuple[str, Op] | None:
    """(node, op) producing a Ref, or None for a non-tensor value."""
    if not isinstance(value, Ref):
        return None
    return value.node, op_of(g, value.node)


def target_of(g: Graph, value) -> str | None:
    p = producer(g, value)
    return p[1].target if p else None


def sole_user(g: Graph, name: str) -> str | None:
    """The only node reading name, when name is not also a graph output."""
    us = users(g, name)
    if len(us) == 1 and not is_live_out(g, name):
        return us[0]
    return None


def only_users_are(g: Graph, name: str, allowed: set[str]) -> bool:
    return not is_live_out(g, name) and set(users(g, name)) <= allowed


def role(g: Graph, value) -> str | None:
    """The input role ("param:...", "buffer:...", "derived:...", "user") of a graph input, else None."""
    if isinstance(value, Ref) and op_of(g, value.node).target == "input":
        return g.graph["roles"][value.node]
    return None


def is_weight(g: Graph, value) -> bool:
    """True for parameters and weights derived from them at load time (constants of the plan)."""
    r = role(g, value)
    return r is not None and (r.startswith("param:") or r.startswith("derived:"))


def shape(g: Graph, ref: Ref) -> tuple[int, ...]:
    return out_type(g, ref).shape


def dtype(g: Graph, ref: Ref):
    return out_type(g, ref).dtype


def see_through_views(g: Graph, ref: Ref) -> Ref:
    """Follow view-like ops back to the tensor they alias."""
    while True:
        p = producer(g, ref)
        if p is None or p[1].target not in VIEW_OPS:
            return ref
        ref = p[1].args[0]


def _meta(t: TensorType) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride, dtype=t.dtype, device="meta")


def typed(g: Graph, op: Op, types: dict[Ref, TensorType] | None = None) -> Op:
    """op with its output type, found by running it on meta tensors of its arguments' types (types: the
    types some arguments will have instead of their current ones). Raises what the op raises for them."""
    fn = op_overload(op.target)
    types = types or {}

    def meta(v):
        if isinstance(v, Ref):
            return _meta(types.get(v) or op_of(g, v.node).outputs[v.index])
        if isinstance(v, (tuple, list)):
            return type(v)(meta(x) for x in v)
        return v

    out = fn(*meta(op.args), **{k: meta(v) for k, v in op.kwargs})
    return replace(op, outputs=(TensorType(tuple(out.shape), out.dtype, tuple(out.stride())),))


def restrided_views(g: Graph, ref: Ref, new: TensorType) -> dict[str, Op] | None:
    """The view ops that read ref (directly or through other views), retyped for ref taking type `new` (the
    same shape, other strides: a matmul output become a slice of a wider one); None where one of them
    cannot view that layout. A view's strides follow its input's, so a pass that changes a value's layout
    retypes these, or kernels made later read stale strides."""
    out: dict[str, Op] = {}
    types = {ref: new}
    todo = [ref]
    while todo:
        r = todo.pop()
        for u in users(g, r.node):
            op = out.get(u) or op_of(g, u)
            if op.target not in VIEW_OPS or r not in op.args[:1]:
                continue
            try:
                t = typed(g, op, types).outputs[0]
            except (RuntimeError, ValueError, TypeError, IndexError):
                return None  # e.g. view() of a layout it cannot alias
            if t == op.outputs[0]:
                continue
            out[u] = replace(op, outputs=(t,))
            types[Ref(u)] = t
            todo.append(Ref(u))
    return out


def prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def scalar(v) -> float | None:
    """v as a float when it is a Python number (not a bool, not a tensor), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

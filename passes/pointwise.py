"""Fuse chains of elementwise ATen ops into one `pointwise` kernel each: the chain becomes an expression
(kernel_templates/expr.py), intermediates never reach HBM. Runs after the pattern fusions (norms, rope,
attention, matmul lowering) so those see their ATen patterns intact.
"""

from __future__ import annotations

import torch

from ds4c.ir import Graph, Op, Ref, bump, is_live_out, op_of, ordered, set_op, users

from .cleanup import copy_graph, eliminate_dead_code

FLOAT = {torch.float32, torch.float16, torch.bfloat16}


def _binary(name):
    return lambda op, a: (name, a[0], a[1])


def _unary(name):
    return lambda op, a: (name, a[0])


def _add(op, a):
    alpha = op.kw("alpha", 1)
    return ("add", a[0], a[1] if alpha == 1 else ("mul", a[1], float(alpha)))


def _sub(op, a):
    alpha = op.kw("alpha", 1)
    return ("sub", a[0], a[1] if alpha == 1 else ("mul", a[1], float(alpha)))


def _gelu(op, a):
    return ("gelu_tanh" if op.kw("approximate", "none") == "tanh" else "gelu", a[0])


def _cast(op, a):
    return ("cast", a[0], str(op.outputs[0].dtype).removeprefix("torch."))


# ATen target -> (expression builder over operand expressions). Operands: tensors and Python numbers.
RULES = {
    "aten.add.Tensor": _add, "aten.add.Scalar": _add,
    "aten.sub.Tensor": _sub, "aten.sub.Scalar": _sub,
    "aten.rsub.Scalar": lambda op, a: ("sub", a[1], a[0]),
    "aten.mul.Tensor": _binary("mul"), "aten.mul.Scalar": _binary("mul"),
    "aten.div.Tensor": _binary("div"), "aten.div.Scalar": _binary("div"),
    "aten.maximum.default": _binary("maximum"), "aten.minimum.default": _binary("minimum"),
    "aten.neg.default": _unary("neg"), "aten.exp.default": _unary("exp"), "aten.log.default": _unary("log"),
    "aten.sqrt.default": _unary("sqrt"), "aten.rsqrt.default": _unary("rsqrt"),
    "aten.abs.default": _unary("abs"), "aten.sin.default": _unary("sin"), "aten.cos.default": _unary("cos"),
    "aten.reciprocal.default": _unary("reciprocal"), "aten.sigmoid.default": _unary("sigmoid"),
    "aten.silu.default": _unary("silu"), "aten.relu.default": _unary("relu"),
    "aten.tanh.default": _unary("tanh"), "aten.gelu.default": _gelu,
    "aten.pow.Tensor_Scalar": lambda op, a: ("pow", a[0], float(a[1])),
    "aten._to_copy.default": _cast, "aten.to.dtype": _cast,
}


def _operands(op: Op) -> list:
    if op.target in ("aten._to_copy.default", "aten.to.dtype"):
        return [op.args[0]]
    if op.target == "aten.pow.Tensor_Scalar":
        return [op.args[0], op.args[1]]
    return list(op.args[:2]) if len(op.args) >= 2 else [op.args[0]]


def check_pointwise(g: Graph, name: str) -> bool:
    """A float elementwise op whose tensor operands broadcast to its output and whose extra arguments
    are understood (no devices, layouts or unexpected kwargs)."""
    op = op_of(g, name)
    if op.target not in RULES or len(op.outputs) != 1 or op.outputs[0] is None:
        return False
    out = op.outputs[0]
    if out.dtype not in FLOAT:
        return False
    allowed = {"alpha", "approximate", "dtype", "layout", "device", "pin_memory", "memory_format"}
    if any(k not in allowed for k, _ in op.kwargs):
        return False
    if op.kw("device") is not None:
        return False
    for a in _operands(op):
        if isinstance(a, Ref):
            t = op_of(g, a.node).outputs[a.index]
            if t is None or t.dtype not in FLOAT or len(t.shape) > len(out.shape):
                return False
            if any(s not in (1, o) for s, o in zip(reversed(t.shape), reversed(out.shape), strict=False)):
                return False
        elif not isinstance(a, (int, float)) or isinstance(a, bool):
            return False
    return True


def _group(g: Graph, root: str, taken: set[str]) -> list[str]:
    """Nodes fused with root: pointwise producers of root's shape read only inside the group."""
    members = [root]
    shape = op_of(g, root).outputs[0].shape
    frontier = [root]
    while frontier:
        n = frontier.pop()
        for a in _operands(op_of(g, n)):
            if not isinstance(a, Ref) or a.node in members or a.node in taken or a.index != 0:
                continue
            p = a.node
            if not check_pointwise(g, p) or op_of(g, p).outputs[0].shape != shape or is_live_out(g, p):
                continue
            if all(u in members for u in users(g, p)):
                members.append(p)
                frontier.append(p)
    return members


def _expr(g: Graph, node: str, members: set[str], inputs: list[Ref]):
    op = op_of(g, node)
    operands = []
    for a in _operands(op):
        if isinstance(a, Ref) and a.node in members and a.index == 0:
            operands.append(_expr(g, a.node, members, inputs))
        elif isinstance(a, Ref):
            if a not in inputs:
                inputs.append(a)
            operands.append(f"x{inputs.index(a)}")
        else:
            operands.append(float(a))
    return RULES[op.target](op, operands)


def _broadcast_strides(t, out_shape) -> list[int]:
    pad = len(out_shape) - len(t.shape)
    strides = [0] * pad
    for s, st in zip(t.shape, t.stride, strict=True):
        strides.append(0 if s == 1 else st)
    return [0 if o == 1 else s for s, o in zip(strides, out_shape, strict=True)]


def fuse_pointwise(g: Graph) -> Graph:
    """Maximal single-output chains of elementwise ops -> one pointwise kernel each."""
    g = copy_graph(g)
    taken: set[str] = set()
    for root in reversed(ordered(g)):
        if root in taken or not check_pointwise(g, root):
            continue
        members = _group(g, root, taken)
        taken.update(members)
        inputs: list[Ref] = []
        e = _expr(g, root, set(members), inputs)
        out = op_of(g, root).outputs[0]
        if not inputs:
            continue  # a constant expression: leave it to ATen
        problem = {"shape": list(out.shape), "dtype": str(out.dtype).removeprefix("torch."),
                   "inputs": [{"dtype": str(op_of(g, r.node).outputs[r.index].dtype).removeprefix("torch."),
                               "strides": _broadcast_strides(op_of(g, r.node).outputs[r.index], out.shape)}
                              for r in inputs],
                   "expr": e}
        fused = tuple(op_of(g, m).target for m in reversed(members))
        set_op(g, root, Op("kernel:pointwise", args=tuple(inputs), outputs=(out,), problem=problem,
                           fused=fused, group="pointwise"))
        bump(g, "fuse_pointwise")
        if len(members) > 1:
            bump(g, "fuse_pointwise.ops_fused", len(members))
    return eliminate_dead_code(g)

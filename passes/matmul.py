"""Matrix-multiply passes: ATen linear/mm/addmm -> `matmul` kernels, then grow them: SwiGLU pairs into one
dual kernel, sibling projections of one input into one wide kernel, pointwise consumers into the epilogue,
a preceding RMSNorm into the prologue.

A matmul node's args follow the template's launch order: x, [norm_w], w, [w_scale], [w2, [w2_scale]], [bias],
e0, ...
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ds4c.ir import Graph, Op, Ref, TensorType, add_node, bump, is_live_out, op_of, ordered, replace_uses, set_op

from .cleanup import copy_graph, eliminate_dead_code
from .derive import derived_input, weight_type
from .match import RESHAPES, is_weight, prod, producer, restrided_views, shape, sole_user, target_of, users

FLOAT = {torch.float32, torch.float16, torch.bfloat16}
FOLD_MAX_ROWS = 16  # RMSNorm folds into gemv prologues (decode); prefill keeps the norm kernel
MM = ("kernel:matmul", "kernel:gemv")


@dataclass(frozen=True)
class MMParts:
    x: Ref
    norm_w: Ref | None
    w: Ref
    w_scale: Ref | None
    w2: Ref | None
    w2_scale: Ref | None
    bias: Ref | None
    extras: tuple[Ref, ...]


def parts(op: Op) -> MMParts:
    """Split a matmul node's args by its problem's holes."""
    p, a = op.problem, list(op.args)
    quant = p["w_dtype"] != "same"
    x = a.pop(0)
    g = a.pop(0) if p["rms_eps"] is not None else None
    w = a.pop(0)
    ws = a.pop(0) if quant else None
    w2 = a.pop(0) if p["dual"] else None
    w2s = a.pop(0) if p["dual"] and quant else None
    b = a.pop(0) if p["bias"] else None
    return MMParts(x, g, w, ws, w2, w2s, b, tuple(a))


def args_of(m: MMParts) -> tuple:
    return tuple(v for v in (m.x, m.norm_w, m.w, m.w_scale, m.w2, m.w2_scale, m.bias) if v is not None) \
        + m.extras


def _dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def matmul_op(g: Graph, x: Ref, w: Ref, bias: Ref | None, fused: tuple[str, ...]) -> Op:
    xt = op_of(g, x.node).outputs[x.index]
    n, k = weight_type(g, w).shape
    out_shape = xt.shape[:-1] + (n,)
    problem = {"M": prod(xt.shape[:-1]), "N": n, "K": k, "dtype": _dtype_name(xt.dtype), "w_dtype": "same",
               "rms_eps": None, "dual": False, "bias": bias is not None, "n_extra": 0,
               "epilogue": "acc" if bias is None else ("add", "acc", "bias")}
    stride, acc = [], 1
    for s in reversed(out_shape):
        stride.append(acc)
        acc *= s
    out = TensorType(out_shape, xt.dtype, tuple(reversed(stride)))
    args = (x, w) + ((bias,) if bias is not None else ())
    return Op("kernel:matmul", args=args, outputs=(out,), problem=problem, fused=fused, group="matmul")


def check_matmul_operands(g: Graph, x: Ref, w: Ref, bias) -> bool:
    """x [..., K] with unit stride on K; w [N, K] contiguous; one float dtype; bias [N] or absent."""
    xt, wt = op_of(g, x.node).outputs[x.index], op_of(g, w.node).outputs[w.index]
    if xt is None or wt is None or len(wt.shape) != 2 or not wt.is_contiguous():
        return False
    if xt.dtype not in FLOAT or wt.dtype != xt.dtype or xt.shape[-1] != wt.shape[1] or not xt.shape:
        return False
    if xt.shape[-1] > 1 and xt.stride[-1] != 1:
        return False
    if bias is not None:
        bt = op_of(g, bias.node).outputs[bias.index]
        if bt.shape != (wt.shape[0],) or bt.dtype != xt.dtype:
            return False
    return True


def _transposed_weight(g: Graph, wt) -> Ref | None:
    """w when wt = t(w) or permute(w, [1, 0]) (how aot_autograd spells a linear layer's weight)."""
    p = producer(g, wt)
    if p and p[1].target in ("aten.t.default", "aten.permute.default", "aten.transpose.int"):
        if p[1].target == "aten.permute.default" and tuple(p[1].args[1]) != (1, 0):
            return None
        return p[1].args[0]
    return None


def _flattened_linear(g: Graph, name: str) -> tuple[Ref, Ref, Ref | None] | None:
    """(x, w, bias) when node name is reshape(mm(reshape(x, [T, K]), t(w)), x.shape[:-1] + [N]) or the same
    with addmm(bias, ...): aot_autograd's spelling of linear(x, w, bias) on an x of more than two dims."""
    op = op_of(g, name)
    p = producer(g, op.args[0]) if op.target in RESHAPES else None
    if p is None or sole_user(g, p[0]) != name:
        return None
    mm = p[1]
    if mm.target == "aten.mm.default" and not mm.kwargs:
        flat, wt, bias = mm.args[0], mm.args[1], None
    elif mm.target == "aten.addmm.default" and mm.kw("beta", 1) == 1 and mm.kw("alpha", 1) == 1:
        bias, flat, wt = mm.args[:3]
        if not isinstance(bias, Ref) or len(shape(g, bias)) != 1:
            return None
    else:
        return None
    q = producer(g, flat)
    w = _transposed_weight(g, wt)
    if q is None or q[1].target not in RESHAPES or w is None:
        return None
    x = q[1].args[0]
    xs = shape(g, x)
    if len(xs) < 3 or op.outputs[0].shape != xs[:-1] + (shape(g, w)[0],):
        return None
    return x, w, bias


def unflatten_linear(g: Graph) -> Graph:
    """reshape(mm(reshape(x, [T, K]), t(w)), [..., T', N]) -> linear(x, w) (addmm: with its bias), so the
    fusions see the layer's output where the model wrote it, not behind views; needs remove_noops."""
    g = copy_graph(g)
    for name in ordered(g):
        found = _flattened_linear(g, name)
        if found is None:
            continue
        x, w, bias = found
        args = (x, w) + ((bias,) if bias is not None else ())
        set_op(g, name, Op("aten.linear.default", args=args, outputs=op_of(g, name).outputs))
        bump(g, "unflatten_linear")
    return eliminate_dead_code(g)


def lower_linear(g: Graph) -> Graph:
    """linear(x, w, b) / mm(x, t(w)) / matmul(x, t(w)) / addmm(b, x, t(w)) -> matmul kernel; needs clean-up."""
    g = copy_graph(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target == "aten.linear.default":
            x, w = op.args[0], op.args[1]
            b = op.args[2] if len(op.args) > 2 else op.kw("bias")
        elif op.target in ("aten.mm.default", "aten.matmul.default"):  # matmul: export's x @ w.t()
            x, w, b = op.args[0], _transposed_weight(g, op.args[1]), None
        elif op.target == "aten.addmm.default" and op.kw("beta", 1) == 1 and op.kw("alpha", 1) == 1:
            x, w, b = op.args[1], _transposed_weight(g, op.args[2]), op.args[0]
        else:
            continue
        if w is None or not check_matmul_operands(g, x, w, b):
            continue
        set_op(g, name, matmul_op(g, x, w, b, (op.target,)))
        bump(g, "lower_linear")
    return eliminate_dead_code(g)


def _plain(op: Op, bias: bool = False) -> bool:
    """x @ W.T alone (bias=True: plus a bias, the whole epilogue) in full precision, without a prologue."""
    p = op.problem
    epilogue = ("add", "acc", "bias") if bias else "acc"
    return (op.target in MM and p["epilogue"] == epilogue and p["bias"] == bias and not p["dual"]
            and p["n_extra"] == 0 and p["rms_eps"] is None and p["w_dtype"] == "same")


def fuse_swiglu(g: Graph) -> Graph:
    """mul(silu(x @ A.T), x @ B.T) -> one dual matmul with epilogue silu(acc) * acc2; needs lower_linear."""
    g = copy_graph(g)
    for name in ordered(g):
        if name not in g or op_of(g, name).target != "aten.mul.Tensor":
            continue
        a, b = op_of(g, name).args[:2]
        for act, up in ((a, b), (b, a)):
            if target_of(g, act) != "aten.silu.default":
                continue
            gate = op_of(g, act.node).args[0]
            if not (isinstance(gate, Ref) and isinstance(up, Ref)):
                continue
            gop, uop = op_of(g, gate.node), op_of(g, up.node)
            if not (gop.target in MM and uop.target in MM and _plain(gop) and _plain(uop)):
                continue
            gp, up_ = parts(gop), parts(uop)
            if gp.x != up_.x or gp.bias or up_.bias or gop.problem["N"] != uop.problem["N"]:
                continue
            if sole_user(g, gate.node) != act.node or sole_user(g, act.node) != name or \
                    sole_user(g, up.node) != name:
                continue
            problem = dict(gop.problem, dual=True, epilogue=("mul", ("silu", "acc"), "acc2"))
            new = replace(gop, args=(gp.x, gp.w, up_.w), problem=problem,
                          outputs=op_of(g, name).outputs, fused=gop.fused + uop.fused + (
                              "aten.silu.default", "aten.mul.Tensor"), group="swiglu")
            set_op(g, name, new)
            bump(g, "fuse_swiglu")
            break
    return eliminate_dead_code(g)


def merge_sibling_matmuls(g: Graph) -> Graph:
    """Plain matmuls reading the same x with weight constants (all without bias, or all with constant
    biases, as Qwen's q/k/v) -> one matmul over the concatenated weights (and biases), its output sliced
    back (views); needs lower_linear."""
    g = copy_graph(g)
    groups: dict[tuple[Ref, bool], list[str]] = {}
    for name in ordered(g):
        op = op_of(g, name)
        for bias in (False, True):
            if _plain(op, bias) and is_weight(g, parts(op).w) and (not bias or is_weight(g, parts(op).bias)):
                groups.setdefault((parts(op).x, bias), []).append(name)
    for (x, bias), members in groups.items():
        if len(members) < 2:
            continue
        ws = [parts(op_of(g, m)).w for m in members]
        ns = [weight_type(g, w).shape[0] for w in ws]
        k = weight_type(g, ws[0]).shape[1]
        wcat = derived_input(g, "cat", ws, (sum(ns), k), weight_type(g, ws[0]).dtype)
        bcat = None
        if bias:
            bs = [parts(op_of(g, m)).bias for m in members]
            bcat = derived_input(g, "cat", bs, (sum(ns),), weight_type(g, bs[0]).dtype)
        first = members[0]
        merged = matmul_op(g, x, wcat, bcat, sum((op_of(g, m).fused for m in members), ()))
        merged = replace(merged, group="merged")
        sliced = [replace(op_of(g, m).outputs[0], stride=merged.outputs[0].stride) for m in members]
        views = [restrided_views(g, Ref(m), t) for m, t in zip(members, sliced, strict=True)]
        if any(v is None for v in views):
            continue  # a reader views the projection in a way a slice of the wider output cannot be viewed
        node = add_node(g, f"{first}_merged", merged, g.nodes[first]["order"] - 0.5)
        start = 0
        for m, n, t, retyped in zip(members, ns, sliced, views, strict=True):
            sl = Op("aten.slice.Tensor", args=(Ref(node), len(t.shape) - 1, start, start + n), outputs=(t,))
            s = add_node(g, f"{m}_slice", sl, g.nodes[first]["order"] - 0.25)
            replace_uses(g, Ref(m), Ref(s))
            for u, op in retyped.items():  # their input is the slice now: the same view, its strides
                set_op(g, u, replace(op, args=tuple(Ref(s) if a == Ref(m) else a for a in op.args)))
            start += n
        bump(g, "merge_sibling_matmuls", len(members))
    return eliminate_dead_code(g)


def fuse_matmul_epilogue(g: Graph) -> Graph:
    """pointwise kernel reading a matmul output (its only reader) -> that matmul's epilogue; same-shape
    operands become extra inputs, a [N] operand the bias. Needs fuse_pointwise."""
    g = copy_graph(g)
    for name in ordered(g):
        if name not in g:
            continue
        pw = op_of(g, name)
        if pw.target != "kernel:pointwise":
            continue
        for i, a in enumerate(pw.args):
            m = a.node
            mop = op_of(g, m)
            if mop.target not in MM or sole_user(g, m) != name or a.index != 0:
                continue
            if mop.outputs[0].shape != pw.outputs[0].shape:
                continue
            new = _absorb(g, mop, pw, i)
            if new is not None:
                set_op(g, name, new)
                bump(g, "fuse_matmul_epilogue")
                break
    return eliminate_dead_code(g)


def _absorb(g: Graph, mop: Op, pw: Op, i: int) -> Op | None:
    """The matmul op with pointwise op pw (reading it as operand i) folded into its epilogue, or None."""
    mp = parts(mop)
    out_shape = pw.outputs[0].shape
    extras = list(mp.extras)
    bias = mp.bias
    epi_in = {}
    for j, a in enumerate(pw.args):
        if j == i:
            continue
        t = op_of(g, a.node).outputs[a.index]
        strides = pw.problem["inputs"][j]["strides"]
        if t.shape == out_shape and t.is_contiguous():
            epi_in[f"x{j}"] = f"e{len(extras)}"
            extras.append(a)
        elif t.shape == (out_shape[-1],) and bias is None and all(s == 0 for s in strides[:-1]) \
                and t.dtype == pw.outputs[0].dtype:
            epi_in[f"x{j}"] = "bias"
            bias = a
        else:
            return None
    sub = dict(epi_in)
    sub[f"x{i}"] = mop.problem["epilogue"]
    epilogue = _substitute(pw.problem["expr"], sub)
    problem = dict(mop.problem, epilogue=epilogue, n_extra=len(extras), bias=bias is not None,
                   dtype=pw.problem["dtype"])
    if pw.outputs[0].dtype != mop.outputs[0].dtype:
        return None  # the template stores in the activation dtype
    new_parts = replace(mp, bias=bias, extras=tuple(extras))
    return replace(mop, args=args_of(new_parts), problem=problem, outputs=pw.outputs,
                   fused=mop.fused + pw.fused, group=f"{mop.group}+epilogue")


def _substitute(e, sub: dict):
    if isinstance(e, str):
        return sub.get(e, e)
    if isinstance(e, tuple):
        if e[0] in ("pow", "cast"):
            return (e[0], _substitute(e[1], sub), e[2])
        return (e[0],) + tuple(_substitute(a, sub) for a in e[1:])
    return e


def check_foldable_norm(g: Graph, norm: str) -> list[str] | None:
    """The matmuls an RMSNorm may fold into: every reader is a decode-sized matmul taking it as x (once),
    with no prologue yet and full-precision weights."""
    nop = op_of(g, norm)
    if nop.problem["residual"] or not is_weight(g, nop.args[1]):
        return None
    readers = users(g, norm)
    if not readers or is_live_out(g, norm):
        return None
    for r in readers:
        rop = op_of(g, r)
        if rop.target not in MM or rop.problem["rms_eps"] is not None or rop.problem["w_dtype"] != "same":
            return None
        mp = parts(rop)
        if mp.x != Ref(norm) or args_of(mp).count(Ref(norm)) != 1:
            return None
        if rop.problem["dtype"] != nop.problem["dtype"]:
            return None
        if rop.problem["M"] > FOLD_MAX_ROWS:
            return None  # tensor-core tiles would run the norm unpipelined: a separate kernel is faster
    return readers


def fold_rmsnorm_into_matmul(g: Graph) -> Graph:
    """rmsnorm(x, gamma) read only by matmuls -> each matmul reads x and gamma and normalises in its
    prologue (the row scale factors out of the dot). Needs fuse_rmsnorm, merges, swiglu."""
    g = copy_graph(g)
    for name in ordered(g):
        if name not in g or op_of(g, name).target != "kernel:rmsnorm":
            continue
        readers = check_foldable_norm(g, name)
        if readers is None:
            continue
        nop = op_of(g, name)
        x, gamma = nop.args[0], nop.args[1]
        for r in readers:
            rop = op_of(g, r)
            mp = parts(rop)
            problem = dict(rop.problem, rms_eps=nop.problem["eps"])
            set_op(g, r, replace(rop, args=args_of(replace(mp, x=x, norm_w=gamma)), problem=problem,
                                 fused=nop.fused + rop.fused, group=f"rmsnorm+{rop.group}"))
        bump(g, "fold_rmsnorm_into_matmul")
    return eliminate_dead_code(g)


def select_gemv(g: Graph) -> Graph:
    """matmul with at most 16 rows -> the gemv template (same problem); run after all matmul fusions."""
    g = copy_graph(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target == "kernel:matmul" and op.problem["M"] <= 16:
            set_op(g, name, replace(op, target="kernel:gemv"))
            bump(g, "select_gemv")
    return g


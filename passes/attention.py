"""Attention: scaled_dot_product_attention (or the backend-specific ops aot_autograd picks for it) ->
`flash_attention` (no mask, causal or not, grouped-query heads) or `decode_attention` (one query against a
static KV cache whose valid prefix is given by a `arange(S) <= pos` mask). Runs after clean-up and
reinplace_state_writes. Then a flash_attention read only through transpose(1, 2) writes that layout itself."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ds4c.ir import Graph, Op, Ref, TensorType, add_node, bump, op_of, ordered, replace_uses, set_op

from .cleanup import copy_graph, eliminate_dead_code
from .match import op_schema, scalar, see_through_views, sole_user, target_of, tokens_major

FLOAT = {torch.float32, torch.float16, torch.bfloat16}

# scaled_dot_product_attention and the backend-specific ops aot_autograd replaces it with; their arguments
# are read by name from each op's schema (the mask is attn_mask or attn_bias, positional or keyword-only)
SDPA = (
    "aten.scaled_dot_product_attention.default",
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
    "aten._scaled_dot_product_flash_attention.default",
    "aten._scaled_dot_product_efficient_attention.default",
    "aten._scaled_dot_product_cudnn_attention.default",
)


def sdpa_arguments(op: Op) -> dict:
    """The op's arguments by their schema names, defaults filled in (an op this torch lacks: {})."""
    schema = op_schema(op.target)
    if schema is None:
        return {}
    kwargs, out = dict(op.kwargs), {}
    for i, a in enumerate(schema.arguments):
        if not a.kwarg_only and i < len(op.args):
            out[a.name] = op.args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def match_prefix_mask(g: Graph, mask) -> tuple[Ref, int] | None:
    """(pos, offset) when mask == (arange(S) <= pos) broadcast, i.e. keys j < pos + 1 are valid."""
    if not isinstance(mask, Ref):
        return None
    m = see_through_views(g, mask)
    op = op_of(g, m.node)
    if op.target not in ("aten.le.Tensor", "aten.lt.Tensor"):
        return None
    ar, pos = op.args[:2]
    if target_of(g, ar) != "aten.arange.default" or not isinstance(pos, Ref):
        return None
    pt = op_of(g, pos.node).outputs[pos.index]
    if pt.numel != 1 or pt.dtype not in (torch.int64, torch.int32):
        return None
    return pos, (1 if op.target == "aten.le.Tensor" else 0)


def check_attention_shapes(q: TensorType, k: TensorType, v: TensorType) -> bool:
    if len(q.shape) != 4 or k.shape != v.shape or q.dtype not in FLOAT or q.dtype != k.dtype:
        return False
    b, hq, _, d = q.shape
    return (k.shape[0] == b and k.shape[3] == d and hq % k.shape[1] == 0 and d in (16, 32, 64, 128, 256)
            and q.stride[-1] == 1 and k.stride[-1] == 1 and v.stride[-1] == 1)


def _kv_len(g: Graph, pos: Ref, offset: int, order: float, cache: dict) -> Ref:
    """pos + offset as a device tensor (one node per pos, shared by all layers)."""
    if offset == 0:
        return pos
    if pos not in cache:
        t = op_of(g, pos.node).outputs[pos.index]
        node = add_node(g, "kv_len", Op("aten.add.Tensor", args=(pos, offset), outputs=(t,)),
                        g.nodes[pos.node]["order"] + 0.5)
        cache[pos] = Ref(node)
    return cache[pos]


def fuse_attention(g: Graph) -> Graph:
    """sdpa -> flash_attention / decode_attention kernels; other masks stay on ATen."""
    g = copy_graph(g)
    kv_cache: dict = {}
    for name in ordered(g):
        op = op_of(g, name)
        if op.target not in SDPA:
            continue
        a = sdpa_arguments(op)
        if not a:
            continue
        q, k, v = a["query"], a["key"], a["value"]
        qt, kt, vt = (op_of(g, r.node).outputs[r.index] for r in (q, k, v))
        mask = a.get("attn_mask", a.get("attn_bias"))
        causal = bool(a.get("is_causal", False))
        if a.get("dropout_p", 0.0) not in (0.0, 0) or not check_attention_shapes(qt, kt, vt):
            continue
        if qt.shape[1] != kt.shape[1] and op.target == "aten.scaled_dot_product_attention.default" \
                and not a.get("enable_gqa", False):
            continue
        scale = a.get("scale") or 1.0 / math.sqrt(qt.shape[-1])
        out = (op.outputs[0],)
        b, hq, t, d = qt.shape
        if causal and t != kt.shape[2]:
            continue  # SDPA aligns a causal mask top-left; the kernels align it bottom-right (a KV cache)
        if mask is None:
            problem = {"B": b, "Hq": hq, "Hkv": kt.shape[1], "T": t, "S": kt.shape[2], "D": d,
                       "dtype": str(qt.dtype).removeprefix("torch."), "causal": causal, "scale": scale}
            new = Op("kernel:flash_attention", args=(q, k, v), outputs=out, problem=problem,
                     fused=(op.target,), group="attention")
        else:
            pm = match_prefix_mask(g, mask)
            if pm is None or t != 1 or causal:
                continue
            kv_len = _kv_len(g, pm[0], pm[1], g.nodes[name]["order"], kv_cache)
            problem = {"B": b, "Hq": hq, "Hkv": kt.shape[1], "S_max": kt.shape[2], "D": d,
                       "dtype": str(qt.dtype).removeprefix("torch."), "scale": scale}
            new = Op("kernel:decode_attention", args=(q, k, v, kv_len), outputs=out, problem=problem,
                     fused=(op.target, "mask"), group="attention")
        if len(op.outputs) > 1:
            node = add_node(g, f"{name}_attn", new, g.nodes[name]["order"] + 0.01)
            replace_uses(g, Ref(name, 0), Ref(node))
        else:
            set_op(g, name, new)
        bump(g, "fuse_attention." + new.template)
    return eliminate_dead_code(g)


@dataclass(frozen=True)
class DecomposedMatch:
    q: Ref
    k: Ref
    v: Ref
    scale: float
    causal: bool


def _through_batch_view(g: Graph, ref, rank4: bool = True):
    """The [B,H,X,Y] tensor that view(x, [B*H, X, Y]) flattens (aot_autograd's spelling of a 4-D @)."""
    if target_of(g, ref) not in ("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default"):
        return None
    src = op_of(g, ref.node).args[0]
    st = op_of(g, src.node).outputs[src.index]
    return src if st is not None and len(st.shape) == 4 else None


def check_causal_mask(g: Graph, mask, t: int, s: int) -> bool:
    """mask == ~tril(ones(T, S)): the positions a causal softmax must not see (T == S)."""
    if t != s or target_of(g, mask) != "aten.bitwise_not.default":
        return False
    tri = op_of(g, mask.node).args[0]
    if target_of(g, tri) != "aten.tril.default" or len(op_of(g, tri.node).args) > 1:
        return False
    ones = op_of(g, tri.node).args[0]
    return target_of(g, ones) == "aten.ones.default" and tuple(op_of(g, ones.node).args[0]) == (t, s)


def match_decomposed_attention(g: Graph, out: str) -> DecomposedMatch | None:
    """view(bmm(view(softmax(scale * view(bmm(view(q), view(k.T))) [masked causal])), view(v)))."""
    pv = op_of(g, out).args[0] if target_of(g, Ref(out)) in ("aten.view.default", "aten._unsafe_view.default") \
        else None
    if pv is None or target_of(g, pv) != "aten.bmm.default" or sole_user(g, pv.node) != out:
        return None
    p_flat, v_flat = op_of(g, pv.node).args[:2]
    p4, v = _through_batch_view(g, p_flat), _through_batch_view(g, v_flat)
    if p4 is None or v is None or target_of(g, p4) != "aten._softmax.default":
        return None
    sm = op_of(g, p4.node)
    x = sm.args[0]
    if sm.args[1] not in (-1, 3) or sm.args[2]:
        return None
    causal = False
    if target_of(g, x) == "aten.masked_fill.Scalar":
        mf = op_of(g, x.node)
        t, s = mf.outputs[0].shape[2:]
        if not (check_causal_mask(g, mf.args[1], t, s) and mf.args[2] == float("-inf")):
            return None
        causal, x = True, mf.args[0]
    scale = 1.0
    if target_of(g, x) in ("aten.mul.Tensor", "aten.div.Tensor") and scalar(op_of(g, x.node).args[1]):
        f = scalar(op_of(g, x.node).args[1])
        scale = f if target_of(g, x) == "aten.mul.Tensor" else 1.0 / f
        x = op_of(g, x.node).args[0]
    if target_of(g, x) not in ("aten.view.default", "aten._unsafe_view.default"):
        return None
    qk = op_of(g, x.node).args[0]
    if target_of(g, qk) != "aten.bmm.default":
        return None
    q, kt = (_through_batch_view(g, a) for a in op_of(g, qk.node).args[:2])
    if q is None or kt is None or target_of(g, kt) != "aten.transpose.int":
        return None
    ta = op_of(g, kt.node).args
    if sorted(d % 4 for d in ta[1:3]) != [2, 3]:
        return None
    k = ta[0]
    qt, kt_, vt = (op_of(g, r.node).outputs[r.index] for r in (q, k, v))
    if qt.shape[:2] != kt_.shape[:2] or not check_attention_shapes(qt, kt_, vt):
        return None
    return DecomposedMatch(q, k, v, scale, causal)


def fuse_decomposed_attention(g: Graph) -> Graph:
    """softmax(scale * q @ k.T [causal mask]) @ v spelled as bmm/softmax/bmm -> flash_attention; runs after
    clean-up (same-shape expands gone). The intermediate scores never reach HBM."""
    g = copy_graph(g)
    for name in ordered(g):
        if name not in g:
            continue
        m = match_decomposed_attention(g, name)
        if m is None:
            continue
        qt, kt = (op_of(g, r.node).outputs[r.index] for r in (m.q, m.k))
        b, h, t, d = qt.shape
        problem = {"B": b, "Hq": h, "Hkv": kt.shape[1], "T": t, "S": kt.shape[2], "D": d,
                   "dtype": str(qt.dtype).removeprefix("torch."), "causal": m.causal, "scale": m.scale}
        set_op(g, name, Op("kernel:flash_attention", args=(m.q, m.k, m.v), outputs=op_of(g, name).outputs,
                           problem=problem, fused=("bmm", "mul", "masked_fill", "_softmax", "bmm"),
                           group="attention"))
        bump(g, "fuse_decomposed_attention")
    return eliminate_dead_code(g)


def _swaps_heads_and_tokens(op: Op, src: Ref) -> bool:
    """op is transpose(src, 1, 2) of a 4-D tensor (dims in either order, negative or not)."""
    return (op.target == "aten.transpose.int" and len(op.args) == 3 and op.args[0] == src
            and sorted(d % 4 for d in op.args[1:3]) == [1, 2])


def write_attention_output_transposed(g: Graph) -> Graph:
    """flash_attention -> [B,Hq,T,D] -> transpose(1, 2), the only reader: the kernel writes [B,T,Hq,D]
    contiguously (problem o_bthd) and the transpose goes. The reshape to [B,T,Hq*D] that the output projection
    reads is then a view, not a transposing copy of the whole attention output."""
    g = copy_graph(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target != "kernel:flash_attention" or op.problem.get("o_bthd") or len(op.outputs) != 1:
            continue
        user = sole_user(g, name)
        if user is None or not _swaps_heads_and_tokens(op_of(g, user), Ref(name)):
            continue
        set_op(g, name, replace(op, outputs=(tokens_major(op.outputs[0]),), problem={**op.problem, "o_bthd": True},
                                fused=op.fused + ("transpose",)))
        replace_uses(g, Ref(user), Ref(name))
        bump(g, "write_attention_output_transposed")
    return eliminate_dead_code(g)

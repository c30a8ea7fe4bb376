"""Rotary embedding: x * cos + rotate_half(x) * sin (Hugging Face layout,
rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])) -> one `rope` kernel; then an attention step's two ropes
and its two KV-cache writes -> one `rope_kv` kernel (in prefill it also writes the rotated k that the
attention reads); then, in decode, that kernel and the attention after it -> one `decode_attention_rope`.
Runs after clean-up, before the pointwise fusion would split the pattern into pieces."""

from __future__ import annotations

import torch

from ds4c.ir import (
    Graph,
    Op,
    Ref,
    TensorType,
    add_node,
    bump,
    graph_output_refs,
    op_of,
    op_refs,
    ordered,
    out_type,
    replace_uses,
    set_op,
    users,
)

from .cleanup import copy_graph, eliminate_dead_code
from .match import sole_user, target_of, tokens_major

FLOAT = {torch.float32, torch.float16, torch.bfloat16}
BIG = 2**62


def _half(g: Graph, ref, d: int):
    """(x, lo) when ref = slice(x, -1, lo, lo + D/2) or output i of split(x, D/2, -1) (x.chunk(2, -1))."""
    if target_of(g, ref) == "aten.split.Tensor":
        x, size = op_of(g, ref.node).args[:2]
        dim = op_of(g, ref.node).args[2] if len(op_of(g, ref.node).args) > 2 else op_of(g, ref.node).kw("dim", 0)
        rank = len(op_of(g, x.node).outputs[x.index].shape)
        if size != d // 2 or dim not in (-1, rank - 1) or ref.index > 1:
            return None
        return x, ref.index * (d // 2)
    if target_of(g, ref) != "aten.slice.Tensor":
        return None
    a = tuple(op_of(g, ref.node).args) + (0, None, None)[len(op_of(g, ref.node).args) - 1:]
    x, dim, lo, hi = a[0], a[1], a[2] or 0, BIG if a[3] is None else a[3]
    rank = len(op_of(g, x.node).outputs[x.index].shape)
    if dim not in (-1, rank - 1) or (lo, min(hi, d)) not in ((0, d // 2), (d // 2, d)):
        return None
    return x, lo


def match_rotate_half(g: Graph, ref) -> Ref | None:
    """x when ref = cat([neg(x[..., D/2:]), x[..., :D/2]], -1)."""
    if target_of(g, ref) != "aten.cat.default":
        return None
    op = op_of(g, ref.node)
    parts = op.args[0]
    d = op.outputs[0].shape[-1]
    dim = op.args[1] if len(op.args) > 1 else op.kw("dim", 0)
    if len(parts) != 2 or dim not in (-1, len(op.outputs[0].shape) - 1):
        return None
    if target_of(g, parts[0]) != "aten.neg.default":
        return None
    hi = _half(g, op_of(g, parts[0].node).args[0], d)
    lo = _half(g, parts[1], d)
    if hi is None or lo is None or hi[0] != lo[0] or hi[1] != d // 2 or lo[1] != 0:
        return None
    return hi[0]


def check_table(g: Graph, ref, t: int, d: int) -> bool:
    """A [.., T, D] table broadcast over the leading dims, contiguous over (T, D)."""
    if not isinstance(ref, Ref):
        return False
    tt = op_of(g, ref.node).outputs[ref.index]
    lead = tt.shape[:-2]
    return (tt.shape[-2:] == (t, d) and all(s == 1 for s in lead) and tt.stride[-1] == 1
            and (t == 1 or tt.stride[-2] == d) and tt.dtype in FLOAT)


def fuse_rope(g: Graph) -> Graph:
    """add(mul(x, cos), mul(rotate_half(x), sin)) -> rope(x, cos, sin)."""
    g = copy_graph(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target != "aten.add.Tensor" or op.kw("alpha", 1) != 1:
            continue
        a, b = op.args[:2]
        for m1, m2 in ((a, b), (b, a)):
            if target_of(g, m1) != "aten.mul.Tensor" or target_of(g, m2) != "aten.mul.Tensor":
                continue
            x_cos, x_rot = op_of(g, m1.node).args[:2], op_of(g, m2.node).args[:2]
            found = None
            for rot, sin in (x_rot, x_rot[::-1]):
                x = match_rotate_half(g, rot)
                if x is not None and x in x_cos:
                    cos = x_cos[1] if x_cos[0] == x else x_cos[0]
                    found = (x, cos, sin)
                    break
            if found is None:
                continue
            x, cos, sin = found
            xt = op_of(g, x.node).outputs[x.index]
            if len(xt.shape) != 4 or xt.dtype not in FLOAT or xt.stride[-1] != 1:
                continue
            bsz, h, t, d = xt.shape
            if not (check_table(g, cos, t, d) and check_table(g, sin, t, d)) or op.outputs[0].shape != xt.shape:
                continue
            ct = op_of(g, cos.node).outputs[cos.index]
            problem = {"B": bsz, "H": h, "T": t, "D": d, "dtype": str(xt.dtype).removeprefix("torch."),
                       "cos_dtype": str(ct.dtype).removeprefix("torch.")}
            out = op.outputs[0]
            if out.dtype != xt.dtype:
                continue
            set_op(g, name, Op("kernel:rope", args=(x, cos, sin), outputs=(out,), problem=problem,
                               fused=("mul", "slice", "neg", "cat", "mul", "add"), group="rope"))
            bump(g, "fuse_rope")
            break
    return eliminate_dead_code(g)


INDEX_COPY_ = "aten.index_copy_.default"


def _cache_write(g: Graph, name: str):
    """(cache, pos, src) when name is index_copy_(cache [B, H, S, D], 2, pos [T], src [B, H, T, D])."""
    op = op_of(g, name)
    if op.target != INDEX_COPY_ or len(op.args) != 4 or not all(isinstance(op.args[i], Ref) for i in (0, 2, 3)):
        return None
    cache, dim, pos, src = op.args
    ct, st, pt = out_type(g, cache), out_type(g, src), out_type(g, pos)
    if len(ct.shape) != 4 or dim not in (2, -2) or len(pt.shape) != 1 or pt.dtype not in (torch.int64, torch.int32):
        return None
    if st.shape != ct.shape[:2] + (pt.shape[0], ct.shape[3]) or st.dtype != ct.dtype:
        return None
    if ct.stride[-1] != 1 or st.stride[-1] != 1:
        return None
    return cache, pos, src


def _v_write(g: Graph, ref, pos, kc):
    """The index_copy_ that writes ref (not a rope) into a v cache other than kc at pos, or None."""
    if not isinstance(ref, Ref) or ref.index != 0 or target_of(g, ref) == "kernel:rope":
        return None
    for u in users(g, ref.node):
        w = _cache_write(g, u)
        if w is not None and w[2] == ref and w[1] == pos and w[0] != kc:
            return u
    return None


def _rope_kv_match(g: Graph, ck: str):
    """(rope of q, rope of k, index_copy_ of v, k_out) that join index_copy_ ck of rope(k) into one rope_kv;
    the ropes share their tables, and one consumer (the attention) reads the rotated q and either both written
    caches (decode; k_out False) or the rotated k and the v that goes into the cache (prefill; k_out True).
    The tables and positions are shared by every layer, so the consumer is what ties one layer's parts."""
    kw = _cache_write(g, ck)
    if kw is None or target_of(g, kw[2]) != "kernel:rope":
        return None
    kc, pos, rk = kw[0], kw[1], kw[2].node
    rk_op = op_of(g, rk)
    k_readers = [u for u in users(g, rk) if u != ck]
    if len(k_readers) > 1:
        return None
    k_out = bool(k_readers)
    found = set()
    for a in k_readers or users(g, ck):
        refs = [r for r in op_of(g, a).args if isinstance(r, Ref)]
        rqs = [r.node for r in refs if r.index == 0 and op_of(g, r.node).target == "kernel:rope" and r.node != rk
               and op_of(g, r.node).args[1:] == rk_op.args[1:] and sole_user(g, r.node) == a]
        if k_out:
            cvs = [v for r in refs if r != Ref(rk) and (v := _v_write(g, r, pos, kc)) is not None]
        else:
            cvs = [r.node for r in refs if r.index == 0 and r.node != ck and (w := _cache_write(g, r.node)) is not None
                   and w[1] == pos and w[0] != kc and target_of(g, w[2]) != "kernel:rope"]
        if len(rqs) == 1 and len(cvs) == 1:
            found.add((rqs[0], rk, cvs[0], k_out))
    if len(found) != 1:
        return None
    rq, _, _, _ = m = found.pop()
    pq, pk = op_of(g, rq).problem, rk_op.problem
    if any(pq[k] != pk[k] for k in ("B", "T", "D", "dtype", "cos_dtype")):
        return None
    if out_type(g, kc).dtype != out_type(g, rk_op.args[0]).dtype:
        return None
    return m


def _as_bhtd(t: TensorType) -> TensorType:
    """transpose(1, 2) of a contiguous [B, T, H, D] type."""
    b, n, h, d = t.shape
    return TensorType((b, h, n, d), t.dtype, (n * h * d, d, h * d, 1))


def fuse_rope_kv_write(g: Graph) -> Graph:
    """rope(xq, cos, sin), index_copy_(k_cache, 2, pos, rope(xk, cos, sin)), index_copy_(v_cache, 2, pos, xv)
    -> rope_kv(k_cache, v_cache, xq, xk, xv, cos, sin, pos): one launch instead of four, writing both caches
    in place. Where the attention reads the rotated k itself (prefill), the kernel also writes it (k_out), and
    its rotated q and k are laid out [B, T, H, D] (bthd) like v, read through transpose(1, 2) views: an
    attention library then returns its output in that layout too. Needs fuse_rope and reinplace_state_writes."""
    g = copy_graph(g)
    for ck in ordered(g):
        if ck not in g or op_of(g, ck).target != INDEX_COPY_:
            continue
        m = _rope_kv_match(g, ck)
        if m is None:
            continue
        rq, rk, cv, k_out = m
        kc, _, pos, _ = op_of(g, ck).args
        vc, _, _, xv = op_of(g, cv).args
        xq, cos, sin = op_of(g, rq).args
        xk = op_of(g, rk).args[0]
        args = (kc, vc, xq, xk, xv, cos, sin, pos)
        after = max(g.nodes[a.node]["order"] for a in args)
        readers = [u for n in (rq, ck, cv, rk) for u in users(g, n) if u not in (ck, cv)]
        old_readers = [u for c in (kc, vc) for u in users(g, c.node) if u not in (ck, cv)]
        before = min([g.nodes[u]["order"] for u in readers] + [float("inf")])
        if after >= before or any(g.nodes[u]["order"] > after for u in old_readers):
            continue  # no place in the order where every input is ready and no reader is passed over
        pk, ct = op_of(g, rk).problem, out_type(g, kc)
        problem = {"B": pk["B"], "Hq": op_of(g, rq).problem["H"], "Hkv": pk["H"], "T": pk["T"], "D": pk["D"],
                   "S_max": ct.shape[2], "dtype": pk["dtype"], "cos_dtype": pk["cos_dtype"]}
        fresh = (op_of(g, rq).outputs[0],)
        if k_out:
            problem |= {"k_out": True, "bthd": True}
            fresh = (tokens_major(fresh[0]), tokens_major(op_of(g, rk).outputs[0]))
        op = Op("kernel:rope_kv", args=args, outputs=(*fresh, ct, out_type(g, vc)),
                problem=problem, fused=op_of(g, rq).fused + op_of(g, rk).fused + (INDEX_COPY_, INDEX_COPY_),
                group="rope+kv_write", writes=2)
        order = (after + before) / 2 if before != float("inf") else after + 1.0
        node = add_node(g, f"{rk}_kv", op, order)
        n_fresh = len(fresh)
        if k_out:  # the attention reads q and k as [B, H, T, D] views of the [B, T, H, D] outputs
            step = (before - order) / 3
            for i, (old, name) in enumerate(((rq, f"{rq}_bhtd"), (rk, f"{rk}_bhtd"))):
                view = Op("aten.transpose.int", args=(Ref(node, i), 1, 2), outputs=(_as_bhtd(fresh[i]),))
                replace_uses(g, Ref(old), Ref(add_node(g, name, view, order + (i + 1) * step), 0))
        else:
            replace_uses(g, Ref(rq), Ref(node, 0))
        replace_uses(g, Ref(ck), Ref(node, n_fresh))
        replace_uses(g, Ref(cv), Ref(node, n_fresh + 1))
        g.remove_nodes_from([ck, cv, rq, rk])
        bump(g, "fuse_rope_kv_write")
    return eliminate_dead_code(g)


def fuse_rope_into_decode_attention(g: Graph) -> Graph:
    """rope_kv (decode: one token, no k_out) -> decode_attention reading its rotated q and both written caches
    -> decode_attention_rope(k_cache, v_cache, xq, xk, xv, cos, sin, pos, kv_len): the attention rotates q and
    the new key itself, takes the new key and value from registers and writes them into the caches. One
    launch per decode step where there were two. Needs fuse_rope_kv_write and fuse_attention."""
    g = copy_graph(g)
    for name in ordered(g):
        op = op_of(g, name)
        if op.target != "kernel:decode_attention":
            continue
        q, k, v, kv_len = op.args
        r = q.node
        rop = op_of(g, r)
        if rop.target != "kernel:rope_kv" or (q, k, v) != (Ref(r, 0), Ref(r, 1), Ref(r, 2)):
            continue
        if rop.problem.get("k_out") or rop.problem["T"] != 1:
            continue
        # the write moves from the rope_kv's place to the attention's: nothing may read the written caches
        # in between, and the rotated q goes nowhere else
        order = g.nodes[name]["order"]
        others = [u for u in users(g, r) if u != name]
        if Ref(r, 0) in graph_output_refs(g) or any(
                g.nodes[u]["order"] < order or Ref(r, 0) in op_refs(op_of(g, u)) for u in others):
            continue
        kc, vc, xq, xk, xv, cos, sin, pos = rop.args
        problem = {**op.problem, "cos_dtype": rop.problem["cos_dtype"]}
        set_op(g, name, Op("kernel:decode_attention_rope", args=(kc, vc, xq, xk, xv, cos, sin, pos, kv_len),
                           outputs=(op.outputs[0], rop.outputs[1], rop.outputs[2]), problem=problem,
                           precision=op.precision, fused=rop.fused + op.fused, group="rope+kv_write+attention",
                           writes=2))
        replace_uses(g, Ref(r, 1), Ref(name, 1))
        replace_uses(g, Ref(r, 2), Ref(name, 2))
        g.remove_node(r)
        bump(g, "fuse_rope_into_decode_attention")
    return eliminate_dead_code(g)

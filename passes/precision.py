"""Precision assignment: label every kernel with its op class from the policy table (ds4c/precision.py)
and, in modes that ask for it, store matmul weights in a narrower type (weight-only INT8 or FP8 with a
float32 scale per group of ds4c.precision.QUANT_GROUP weights, derived at load time). Runs after all matmul fusions."""

from __future__ import annotations

from dataclasses import replace

import torch

from ds4c.ir import Graph, bump, is_live_out, op_of, ordered, set_op, users
from ds4c.precision import POLICY, scale_groups

from .cleanup import copy_graph
from .derive import derived_input, weight_type
from .match import VIEW_OPS, is_weight
from .matmul import MM, args_of, parts

_CLASS = {"kernel:rmsnorm": "norm", "kernel:softmax": "pointwise", "kernel:pointwise": "pointwise",
          "kernel:rope": "pointwise", "kernel:flash_attention": "attention",
          "kernel:decode_attention": "attention", "kernel:decode_attention_rope": "attention"}


def classify_matmul(g: Graph, name: str) -> str:
    """ffn_matmul: SwiGLU dual matmuls and the matmul reading one; lm_head: a matmul producing a graph
    output (directly or through views); attn_matmul: the rest."""
    op = op_of(g, name)
    if op.problem["dual"]:
        return "ffn_matmul"
    x = parts(op).x
    if op_of(g, x.node).target in MM and op_of(g, x.node).problem["dual"]:
        return "ffn_matmul"
    if _reaches_output(g, name):
        return "lm_head"
    return "attn_matmul"


def _reaches_output(g: Graph, name: str) -> bool:
    """True when name, or a view of it (the logits reshaped), is a graph output or is indexed to make one."""
    if is_live_out(g, name):
        return True
    return any(op_of(g, u).target == "aten.index_select.default"
               or (op_of(g, u).target in VIEW_OPS and _reaches_output(g, u)) for u in users(g, name))


def assign_precision(mode: str):
    """The pass for one named mode of the policy table."""
    if mode not in POLICY:
        raise ValueError(f"unknown precision mode {mode!r}; known: {', '.join(POLICY)}")
    policy = POLICY[mode]

    def assign_precision(g: Graph) -> Graph:
        """Label kernels with their op class; quantize matmul weights where the mode's policy says so."""
        g = copy_graph(g)
        for name in ordered(g):
            op = op_of(g, name)
            if not op.is_kernel:
                continue
            cls = classify_matmul(g, name) if op.target in MM else _CLASS.get(op.target)
            new = replace(op, precision=cls)
            narrow = policy[cls].compute if cls in policy else None
            if op.target in MM and narrow in (torch.int8, torch.float8_e4m3fn) and op.problem["w_dtype"] == "same":
                new = _quantize(g, new, narrow) or new
            set_op(g, name, new)
        return g

    return assign_precision


def _quantize(g: Graph, op, dtype: torch.dtype):
    mp = parts(op)
    if not is_weight(g, mp.w) or (mp.w2 is not None and not is_weight(g, mp.w2)):
        return None
    qname = str(dtype).removeprefix("torch.")

    def q(w):
        n, k = weight_type(g, w).shape
        return (derived_input(g, "quant", [w], (n, k), dtype, dtype=qname, part="values"),
                derived_input(g, "quant", [w], (n, scale_groups(k)), torch.float32, dtype=qname,
                              part="scale"))

    w, ws = q(mp.w)
    w2, w2s = q(mp.w2) if mp.w2 is not None else (None, None)
    bump(g, f"assign_precision.{qname}")
    return replace(op, args=args_of(replace(mp, w=w, w_scale=ws, w2=w2, w2_scale=w2s)),
                   problem=dict(op.problem, w_dtype=qname))

"""Weights derived from parameters at load time (concatenated, quantized).

A pass that needs such a weight calls `derived_input`: it records the recipe in graph["derived"] (data the
runtime replays when it loads the weights) and returns the Ref of a new graph input with role
"derived:<name>". Recipes: ("cat", [names], {}) along dim 0;
("quant", [w], {"dtype": "int8"|"float8_e4m3fn", "part": "values"|"scale"}): absmax scales, one per
ds4c.precision.QUANT_GROUP weights of a row.
"""

from __future__ import annotations

import torch

from ds4c.ir import Graph, Op, Ref, TensorType, add_node, op_of


def source_name(g: Graph, ref: Ref) -> str:
    """The weight name a param/derived input stands for."""
    role = g.graph["roles"][ref.node]
    return role.split(":", 1)[1]


def _contig(shape: tuple[int, ...], dtype: torch.dtype) -> TensorType:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= s
    return TensorType(tuple(shape), dtype, tuple(reversed(stride)))


def derived_input(g: Graph, op: str, of: list[Ref], shape: tuple[int, ...], dtype: torch.dtype, /,
                  **params) -> Ref:
    """The graph input for weight `op(of...)`, created once per distinct recipe."""
    names = [source_name(g, r) for r in of]
    extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    name = f"{op}({','.join(names)}{';' + extra if extra else ''})"
    role = f"derived:{name}"
    for n, r in g.graph["roles"].items():
        if r == role:
            return Ref(n)
    g.graph["derived"][name] = {"op": op, "of": names, "params": params,
                                "shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
    node = add_node(g, "derived", Op("input", outputs=(_contig(shape, dtype),)),
                    -1.0 - len(g.graph["derived"]))
    g.graph["inputs"].append(node)
    g.graph["roles"][node] = role
    return Ref(node)


def weight_type(g: Graph, ref: Ref) -> TensorType:
    return op_of(g, ref.node).outputs[ref.index]

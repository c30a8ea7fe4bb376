"""Pointwise expressions as data: the fusion passes build them, templates render them into Triton source
and references evaluate them with torch. One definition of each op serves both, so the kernel and its
reference cannot drift apart.

An expression is a variable name (str), a number, or a tuple (op, *operands). Operands are expressions,
except the second operand of "pow" (a number) and of "cast" (a dtype name). Tuples survive JSON as lists;
`from_json` turns them back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

Expr = str | float | int | tuple

# op -> (arity, Triton format string over rendered operands, torch implementation on fp32 tensors)
_OPS: dict[str, tuple[int, str, Callable]] = {
    "add": (2, "({0} + {1})", lambda a, b: a + b),
    "sub": (2, "({0} - {1})", lambda a, b: a - b),
    "mul": (2, "({0} * {1})", lambda a, b: a * b),
    "div": (2, "({0} / {1})", lambda a, b: a / b),
    "maximum": (2, "tl.maximum({0}, {1})", torch.maximum),
    "minimum": (2, "tl.minimum({0}, {1})", torch.minimum),
    "neg": (1, "(-{0})", lambda a: -a),
    "exp": (1, "tl.exp({0})", torch.exp),
    "log": (1, "tl.log({0})", torch.log),
    "sqrt": (1, "tl.sqrt({0})", torch.sqrt),
    "rsqrt": (1, "tl.rsqrt({0})", torch.rsqrt),
    "abs": (1, "tl.abs({0})", torch.abs),
    "sin": (1, "tl.sin({0})", torch.sin),
    "cos": (1, "tl.cos({0})", torch.cos),
    "reciprocal": (1, "(1.0 / {0})", torch.reciprocal),
    "sigmoid": (1, "tl.sigmoid({0})", torch.sigmoid),
    # silu(x) = x * sigmoid(x)
    "silu": (1, "({0} * tl.sigmoid({0}))", torch.nn.functional.silu),
    "relu": (1, "tl.maximum({0}, 0.0)", torch.relu),
    # tanh(x) = 2 * sigmoid(2x) - 1 (no tl.tanh in the language core)
    "tanh": (1, "(2.0 * tl.sigmoid(2.0 * {0}) - 1.0)", torch.tanh),
    # gelu(x) = x/2 * (1 + erf(x / sqrt 2))
    "gelu": (1, "(0.5 * {0} * (1.0 + tl.erf({0} * 0.7071067811865476)))",
             lambda a: torch.nn.functional.gelu(a)),
    # gelu_tanh(x) = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    "gelu_tanh": (1, "(0.5 * {0} * (1.0 + (2.0 * tl.sigmoid(2.0 * (0.7978845608028654 * ({0} + "
                     "0.044715 * {0} * {0} * {0}))) - 1.0)))",
                  lambda a: torch.nn.functional.gelu(a, approximate="tanh")),
}
_UNARY_PARAM = {"pow", "cast"}


def ops() -> tuple[str, ...]:
    """Every op name an expression may use."""
    return tuple(_OPS) + tuple(sorted(_UNARY_PARAM))


def variables(e: Expr) -> list[str]:
    """The variable names e reads, first occurrence order."""
    out: list[str] = []

    def walk(x: Expr) -> None:
        if isinstance(x, str):
            if x not in out:
                out.append(x)
        elif isinstance(x, tuple):
            for a in x[1:2] if x[0] in _UNARY_PARAM else x[1:]:
                walk(a)

    walk(e)
    return out


def check(e: Expr) -> None:
    """Raise ValueError unless e is a well-formed expression (used on anything read from a file)."""
    if isinstance(e, bool):
        raise ValueError(f"boolean {e!r} is not an expression")
    if isinstance(e, str):
        if not e.isidentifier():
            raise ValueError(f"bad variable name {e!r}")
        return
    if isinstance(e, (int, float)):
        if not math.isfinite(e) and not math.isinf(e):
            raise ValueError(f"bad number {e!r}")
        return
    if not isinstance(e, tuple) or not e or not isinstance(e[0], str):
        raise ValueError(f"bad expression {e!r}")
    op = e[0]
    if op == "pow":
        if len(e) != 3 or not isinstance(e[2], (int, float)) or isinstance(e[2], bool):
            raise ValueError(f"pow takes (x, number): {e!r}")
        check(e[1])
        return
    if op == "cast":
        if len(e) != 3 or e[2] not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"cast takes (x, float32|float16|bfloat16): {e!r}")
        check(e[1])
        return
    if op not in _OPS:
        raise ValueError(f"unknown op {op!r}")
    if len(e) - 1 != _OPS[op][0]:
        raise ValueError(f"{op} takes {_OPS[op][0]} operands: {e!r}")
    for a in e[1:]:
        check(a)


def _num(v: float | int) -> str:
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 2**24:
        return f"{float(v)!r}"
    if math.isinf(v):
        return "float('inf')" if v > 0 else "float('-inf')"
    return repr(float(v))


def _pow(x: str, p: float) -> str:
    """x ** p in Triton as torch computes it: products for small integer powers (a negative base keeps its
    sign, as ATen's pow does for 3 and -2), exp(p * log|x|) with the sign of an odd power for larger ones,
    exp(p * log(x)) otherwise (NaN for a negative base, as torch gives)."""
    if p == 0:
        return f"(tl.zeros_like({x}) + 1.0)"  # torch.pow(x, 0) is 1 for every x, NaN included
    if float(p).is_integer() and abs(p) <= 4:
        prod = " * ".join([f"({x})"] * int(abs(p)))
        return f"({prod})" if p > 0 else f"(1.0 / ({prod}))"
    if float(p).is_integer():
        mag = f"tl.exp({_num(p)} * tl.log(tl.abs({x})))"
        return f"tl.where({x} < 0, -{mag}, {mag})" if int(p) % 2 else mag
    return f"tl.exp({_num(p)} * tl.log({x}))"


def to_triton(e: Expr, names: Mapping[str, str] | None = None) -> str:
    """Triton source for e; variables are renamed through `names` (default: kept). Computes in fp32."""
    names = names or {}
    if isinstance(e, str):
        return names.get(e, e)
    if isinstance(e, (int, float)):
        return _num(e)
    op = e[0]
    if op == "pow":
        x, p = to_triton(e[1], names), e[2]
        if p == 2:
            return f"({x} * {x})"
        if p == 0.5:
            return f"tl.sqrt({x})"
        if p == -0.5:
            return f"tl.rsqrt({x})"
        if p == 1:
            return x
        if p == -1:
            return f"(1.0 / {x})"
        return _pow(x, p)
    if op == "cast":
        # A cast inside a fused chain rounds to the narrower type and computes on in fp32 again.
        tl_dtype = {"float32": "tl.float32", "float16": "tl.float16", "bfloat16": "tl.bfloat16"}[e[2]]
        return f"{to_triton(e[1], names)}.to({tl_dtype}).to(tl.float32)"
    return _OPS[op][1].format(*(to_triton(a, names) for a in e[1:]))


def evaluate(e: Expr, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Evaluate e with torch on the tensors in env (the reference side of to_triton)."""
    if isinstance(e, str):
        return env[e]
    if isinstance(e, (int, float)):
        return torch.tensor(float(e), dtype=torch.float64)
    op = e[0]
    if op == "pow":
        return torch.pow(evaluate(e[1], env), e[2])
    if op == "cast":
        x = evaluate(e[1], env)
        return x.to(getattr(torch, e[2])).to(x.dtype)
    return _OPS[op][2](*(evaluate(a, env) for a in e[1:]))


def from_json(v: object) -> Expr:
    """Inverse of JSON encoding (lists back to tuples), checked."""

    def conv(x: object) -> Expr:
        if isinstance(x, list):
            return tuple(conv(a) for a in x)
        return x  # type: ignore[return-value]

    e = conv(v)
    check(e)
    return e

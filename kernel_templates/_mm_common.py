"""The matrix-multiply problem shared by the `matmul` (tensor-core tiles, prefill) and `gemv` (a few rows,
decode) templates: one schema, so the compiler can pick either per shape. This module checks a problem and
gives both templates their holes, inputs, reference, launch kwargs and cost; only the search spaces, the
validity predicates and the defaults differ between them.

Problem (JSON-able; every key present):
    {"M", "N", "K": int, "dtype": "float32"|"float16"|"bfloat16" (x and out),
     "w_dtype": "same"|"int8"|"float8_e4m3fn" (int8/fp8 come with float32 scales [N, ceil(K / G)], one per
                group of G = ds4c.precision.QUANT_GROUP consecutive weights of a row),
     "rms_eps": None | float (RMSNorm prologue: x becomes x * rsqrt(mean(x^2) + eps) * norm_w, with the
                 norm weight norm_w [K] an input right after x),
     "dual": bool (a second weight W2 -> acc2), "bias": bool, "n_extra": int (e0, e1, ... [M,N]),
     "epilogue": expression over acc, acc2, bias, e0, ...}
Math in fp32: acc = ((x * norm_w) @ (W * w_scale[n, k // G]).T) * rowscale[:, None]; out = epilogue(...) in
dtype. The row scale factors out of the dot, so a kernel gathers sum(x^2) beside the product and scales once.
launch(out, x, [norm_w], w, [w_scale], [w2, [w2_scale]], [bias], e0, ..., eps=..., **config).
"""

from __future__ import annotations

import json

import torch

from ds4c.kernel_templates import expr as E
from ds4c.kernel_templates.base import Problem, dtype_of, randn
from ds4c.precision import QUANT_GROUP, dequantize, scale_groups

KEYS = ("M", "N", "K", "dtype", "w_dtype", "rms_eps", "dual", "bias", "n_extra", "epilogue")
ACT_DTYPES = ("float32", "float16", "bfloat16")
W_DTYPES = ("same", "int8", "float8_e4m3fn")
SWIGLU = ("mul", ("silu", "acc"), "acc2")  # the dual epilogue silu(x @ W.T) * (x @ W2.T)
_TL = {"float32": "tl.float32", "float16": "tl.float16", "bfloat16": "tl.bfloat16"}


def problem(M: int, N: int, K: int, dtype: str = "bfloat16", *, w_dtype: str = "same",
            rms_eps: float | None = None, dual: bool = False, bias: bool = False, n_extra: int = 0,
            epilogue: E.Expr = "acc") -> Problem:
    """A checked problem dict with every key present (the passes and tests build problems with this)."""
    p = {"M": M, "N": N, "K": K, "dtype": dtype, "w_dtype": w_dtype, "rms_eps": rms_eps, "dual": dual,
         "bias": bias, "n_extra": n_extra, "epilogue": epilogue}
    check_problem(p)
    return p


def epilogue_of(p: Problem) -> E.Expr:
    """The epilogue expression, whether it arrived as tuples or as JSON lists."""
    return E.from_json(json.loads(json.dumps(p["epilogue"])))


def variables_available(p: Problem) -> list[str]:
    """The names an epilogue of this problem may read."""
    names = ["acc"] + (["acc2"] if p["dual"] else []) + (["bias"] if p["bias"] else [])
    return names + [f"e{i}" for i in range(p["n_extra"])]


def check_problem(p: Problem) -> None:
    """Raise ValueError unless p is a well-formed matmul problem."""
    if not isinstance(p, dict) or set(p) != set(KEYS):
        raise ValueError(f"a matmul problem has exactly the keys {KEYS}")
    for k in ("M", "N", "K", "n_extra"):
        if type(p[k]) is not int or p[k] < (0 if k == "n_extra" else 1):
            raise ValueError(f"{k} must be a positive int, got {p[k]!r}")
    if p["dtype"] not in ACT_DTYPES or p["w_dtype"] not in W_DTYPES:
        raise ValueError(f"dtype {p['dtype']!r} / w_dtype {p['w_dtype']!r} not supported")
    eps = p["rms_eps"]
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0):
        raise ValueError(f"rms_eps must be None or a float >= 0, got {p['rms_eps']!r}")
    if type(p["dual"]) is not bool or type(p["bias"]) is not bool:
        raise ValueError("dual and bias are bools")
    used = E.variables(epilogue_of(p))
    extra = [v for v in used if v not in variables_available(p)]
    if extra:
        raise ValueError(f"epilogue reads {extra}, not among {variables_available(p)}")


def holes(p: Problem) -> dict:
    """Jinja variables shared by matmul.py.j2 and gemv.py.j2. M, N, K stay runtime arguments, so one
    source serves every shape of the same kind."""
    check_problem(p)
    quant = {"same": "", "int8": "int8", "float8_e4m3fn": "fp8"}[p["w_dtype"]]
    return {
        "act": p["dtype"], "act_tl": _TL[p["dtype"]], "quant": quant,
        "w_dtype": p["dtype"] if not quant else p["w_dtype"],
        "rms": p["rms_eps"] is not None, "dual": p["dual"], "bias": p["bias"], "n_extra": p["n_extra"],
        "epilogue": E.to_triton(epilogue_of(p)),
        "epilogue_expr": repr(epilogue_of(p)),  # a Python literal, for the vendor-BLAS path of matmul
        "group": QUANT_GROUP,  # weights per scale of a quantised row
    }


def arg_names(p: Problem) -> list[str]:
    """Names of the inputs launch takes after `out`, in order."""
    names = ["x"] + (["norm_w"] if p["rms_eps"] is not None else []) + ["w"]
    names += ["w_scale"] if p["w_dtype"] != "same" else []
    if p["dual"]:
        names += ["w2"] + (["w2_scale"] if p["w_dtype"] != "same" else [])
    return names + (["bias"] if p["bias"] else []) + [f"e{i}" for i in range(p["n_extra"])]


def _weight(p: Problem, device, gen: torch.Generator) -> list[torch.Tensor]:
    """W [N, K] with std ~ 1/sqrt(K) after dequantisation (so acc is O(1)), plus its scale if quantised."""
    N, K = p["N"], p["K"]
    if p["w_dtype"] == "same":
        return [randn((N, K), dtype_of(p["dtype"]), device, gen, std=K**-0.5)]
    scale = (0.5 + torch.rand(N, scale_groups(K), generator=gen)) * K**-0.5
    if p["w_dtype"] == "int8":
        q = torch.randint(-127, 128, (N, K), generator=gen, dtype=torch.int8)
        scale = scale / 73.0  # the std of uniform ints in [-127, 127]
    else:
        q = torch.randn((N, K), generator=gen).mul(4.0).to(torch.float8_e4m3fn)
        scale = scale / 4.0
    return [q.to(device), scale.to(torch.float32).to(device)]


def make_inputs(p: Problem, device, gen: torch.Generator) -> tuple[list, list]:
    """([out poisoned with NaN], [x, (norm_w), w, (w_scale), (w2, (w2_scale)), (bias), e0, ...]), random."""
    check_problem(p)
    M, N, K = p["M"], p["N"], p["K"]
    act = dtype_of(p["dtype"])
    ins = [randn((M, K), act, device, gen)]
    if p["rms_eps"] is not None:  # a norm weight around 1, as trained ones are
        ins.append((1.0 + 0.25 * torch.randn(K, generator=gen)).to(act).to(device))
    ins += _weight(p, device, gen)
    if p["dual"]:
        ins += _weight(p, device, gen)
    if p["bias"]:
        ins.append(randn((N,), act, device, gen, std=0.5))
    ins += [randn((M, N), act, device, gen) for _ in range(p["n_extra"])]
    out = torch.full((M, N), float("nan"), dtype=act, device=device)
    return [out], ins


def _dequant(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    w = w.detach().cpu()
    return w.to(torch.float32) if scale is None else dequantize(w, scale.detach().cpu())


def reference(p: Problem, ins: list) -> list:
    """The problem's math in fp32 on CPU (inputs as stored, weights dequantised)."""
    args = dict(zip(arg_names(p), ins, strict=True))
    x = args["x"].detach().cpu().to(torch.float32)
    rowscale = torch.ones(p["M"], 1)
    if p["rms_eps"] is not None:
        rowscale = torch.rsqrt(x.square().mean(dim=1, keepdim=True) + p["rms_eps"])
        x = x * args["norm_w"].detach().cpu().to(torch.float32)[None, :]
    env = {"acc": (x @ _dequant(args["w"], args.get("w_scale")).T) * rowscale}
    if p["dual"]:
        env["acc2"] = (x @ _dequant(args["w2"], args.get("w2_scale")).T) * rowscale
    for name in variables_available(p)[1 + p["dual"]:]:
        env[name] = args[name].detach().cpu().to(torch.float32)
    y = E.evaluate(epilogue_of(p), env).to(torch.float32)
    return [y.expand(p["M"], p["N"]).contiguous()]


def launch_kwargs(p: Problem) -> dict:
    return {"eps": float(p["rms_eps"] or 0.0)}


def _count_ops(e: E.Expr) -> int:
    return 0 if not isinstance(e, tuple) else 1 + sum(_count_ops(a) for a in e[1:] if isinstance(a, tuple))


def cost(p: Problem) -> tuple[float, float]:
    """(flops, minimum bytes): every operand read once and the output written once."""
    M, N, K = p["M"], p["N"], p["K"]
    n_w = 2 if p["dual"] else 1
    act = dtype_of(p["dtype"]).itemsize
    wb = act if p["w_dtype"] == "same" else 1
    flops = 2.0 * M * N * K * n_w + M * N * _count_ops(epilogue_of(p))
    nbytes = M * K * act + n_w * N * K * wb + (n_w * N * scale_groups(K) * 4 if p["w_dtype"] != "same" else 0)
    nbytes += K * act if p["rms_eps"] is not None else 0
    nbytes += (N * act if p["bias"] else 0) + p["n_extra"] * M * N * act + M * N * act
    return float(flops), float(nbytes)


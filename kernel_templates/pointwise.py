"""Pointwise template: a fused elementwise expression (kernel_templates/expr.py) over inputs broadcast to one
output shape. The fusion passes emit the problem; this module specialises pointwise.py.j2 on its static
shape and strides, and gives the tuner the search space, the default and the reference.

Problem: {"shape": [ints], "dtype": out dtype, "inputs": [{"dtype", "strides"}], "expr": expression over
x0, x1, ...}; strides are element strides of each input as broadcast to the output shape (0 where broadcast).
"""

from __future__ import annotations

import math

import torch

from ds4c.device import GpuInfo

from . import expr as E
from .base import Config, Problem, SearchSpace, Template, dtype_of

SPACE = SearchSpace((
    ("BLOCK", (128, 256, 512, 1024, 2048, 4096)),
    ("num_warps", (1, 2, 4, 8)),
))

_TL = {"float32": "tl.float32", "float16": "tl.float16", "bfloat16": "tl.bfloat16"}
_INT32_LIMIT = 2**31 - 2**16  # offsets at or above this use int64 indexing


def _expr(problem: Problem) -> E.Expr:
    return E.from_json(problem["expr"])


def collapse(shape: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that every input walks contiguously (row-major output).

    Returns (sizes, strides per input) with at least one dim; a scalar output becomes one dim of size 1.
    """
    keep = [d for d, n in enumerate(shape) if n != 1]
    sizes: list[int] = []
    st: list[list[int]] = [[] for _ in strides]
    for d in keep:
        # merge d into the previous (outer) group when outer stride == inner stride * inner size, per input
        if sizes and all(s[-1] == src[d] * shape[d] for s, src in zip(st, strides, strict=True)):
            sizes[-1] *= shape[d]
            for s, src in zip(st, strides, strict=True):
                s[-1] = src[d]
        else:
            sizes.append(shape[d])
            for s, src in zip(st, strides, strict=True):
                s.append(src[d])
    if not sizes:
        return [1], [[0] for _ in strides]
    return sizes, st


def _holes(problem: Problem) -> dict:
    shape = [int(n) for n in problem["shape"]]
    ins = problem["inputs"]
    strides = [[int(s) for s in x["strides"]] for x in ins]
    if any(len(s) != len(shape) for s in strides):
        raise ValueError("every input needs one stride per output dim")
    e = _expr(problem)
    used = E.variables(e)
    names = [f"x{i}" for i in range(len(ins))]
    if any(v not in names for v in used):
        raise ValueError(f"expression reads {used}, inputs are {names}")
    sizes, cst = collapse(shape, strides)
    numel = math.prod(shape)
    max_off = max([numel] + [sum((n - 1) * s for n, s in zip(sizes, st, strict=True)) + 1 for st in cst])
    # coordinate of collapsed dim d: (idx // inner_d) % size_d, written only when some input needs it
    inner = [math.prod(sizes[d + 1:]) for d in range(len(sizes))]
    coords, loads = [], []
    needed: set[int] = set()
    for i, st in enumerate(cst):
        if f"x{i}" not in used:
            continue
        if all(s == 0 for s in st):
            loads.append({"i": i, "scalar": True, "offset": "0"})
            continue
        if len(sizes) == 1 or st == [inner[d] for d in range(len(sizes))]:
            off = "idx" if st[-1] == 1 or len(sizes) > 1 else f"idx * {st[0]}"
        else:
            terms = [f"c{d}" if s == 1 else f"c{d} * {s}" for d, s in enumerate(st) if s != 0]
            needed.update(d for d, s in enumerate(st) if s != 0)
            off = " + ".join(terms)
        loads.append({"i": i, "scalar": False, "offset": off})
    for d in sorted(needed):
        c = "idx" if inner[d] == 1 else f"(idx // {inner[d]})"
        coords.append(f"c{d} = {c}" if d == 0 else f"c{d} = {c} % {sizes[d]}")
    out_dtype = problem["dtype"]
    for name in [out_dtype] + [x["dtype"] for x in ins]:
        dtype_of(name)  # raises on a dtype no kernel takes
    return {
        "shape": tuple(shape), "dims": sizes, "numel": numel,
        "out_dtype": out_dtype, "out_tl": _TL[out_dtype],
        "in_dtypes": [x["dtype"] for x in ins],
        "in_strides": tuple(tuple(s) for s in strides), "n_inputs": len(ins),
        "index64": max_off >= _INT32_LIMIT, "coords": coords, "loads": loads,
        "expr": E.to_triton(e),
    }


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    if not SPACE.contains(config):
        return False
    block, warps = config["BLOCK"], config["num_warps"]
    per_thread = block // (32 * warps)
    numel = max(1, math.prod(problem["shape"]))
    # 1..16 elements per thread; no block more than 4x larger than the whole output
    return 1 <= per_thread <= 16 and (block <= 128 or block // 4 < numel)


def default(problem: Problem, gpu: GpuInfo) -> Config:
    """1024 elements and 4 warps per program (8 per thread: 16-byte bf16 loads), smaller while the grid
    would leave SMs idle."""
    numel = max(1, math.prod(problem["shape"]))
    block = 1024
    while block > 128 and -(-numel // block) < 2 * gpu.sm_count:
        block //= 2
    return {"BLOCK": block, "num_warps": max(1, min(4, block // 256))}


def _input_tensor(shape, strides, dtype, device, gen) -> torch.Tensor:
    """A random tensor that expands to `shape` with exactly `strides` (size 1 where the stride is 0)."""
    size = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0)
    buf = (torch.randn(size, generator=gen, dtype=torch.float32)).to(dtype).to(device)
    small = [n if s != 0 else 1 for n, s in zip(shape, strides, strict=True)]
    return buf.as_strided(small, [s if s != 0 else 1 for s in strides])


def make_inputs(problem: Problem, device, gen: torch.Generator):
    shape = list(problem["shape"])
    out = torch.full(shape, float("nan"), dtype=dtype_of(problem["dtype"]), device=device)
    ins = [_input_tensor(shape, x["strides"], dtype_of(x["dtype"]), device, gen) for x in problem["inputs"]]
    return [out], ins


def reference(problem: Problem, ins: list) -> list:
    """The expression in float64 on the inputs as loaded (fp32 values of each input dtype)."""
    shape = list(problem["shape"])
    env = {f"x{i}": x.detach().cpu().to(torch.float64).expand(shape) for i, x in enumerate(ins)}
    y = E.evaluate(_expr(problem), env).to(torch.float64)
    return [y.expand(shape).clone()]


def launch_kwargs(problem: Problem) -> dict:
    return {}


def _count_ops(e: E.Expr) -> int:
    if not isinstance(e, tuple):
        return 0
    args = e[1:2] if e[0] in ("pow", "cast") else e[1:]
    return 1 + sum(_count_ops(a) for a in args)


def cost(problem: Problem) -> tuple[float, float]:
    shape = list(problem["shape"])
    numel = math.prod(shape)
    nbytes = numel * dtype_of(problem["dtype"]).itemsize
    for x in problem["inputs"]:
        distinct = math.prod(n for n, s in zip(shape, x["strides"], strict=True) if s != 0)
        nbytes += distinct * dtype_of(x["dtype"]).itemsize
    return float(numel * _count_ops(_expr(problem))), float(nbytes)


TEMPLATE = Template(
    name="pointwise", file="pointwise.py.j2", space=SPACE, holes=_holes, valid=valid, default=default,
    make_inputs=make_inputs, reference=reference, launch_kwargs=launch_kwargs, cost=cost,
    token_dims=("shape[0]",),
)

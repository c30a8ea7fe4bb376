"""RMSNorm template (optionally after a residual add): the norm pass emits the problem, this module renders
rmsnorm.py.j2 and gives the tuner its search space, default and reference. Also home of the row-kernel
search space that softmax.py shares (ROWS rows per program, BLOCK columns per chunk).

Problem: {"rows", "cols", "dtype", "w_dtype", "eps", "residual": bool}.
launch(y, [h], x, w, [r], eps=..., ROWS, BLOCK, num_warps); h = x + r is stored when residual.
"""

from __future__ import annotations

import torch

from ds4c.device import GpuInfo

from .base import Config, Problem, SearchSpace, Template, dtype_of, randn

ROW_SPACE = SearchSpace((
    ("ROWS", (1, 2, 4, 8, 16)),
    ("BLOCK", (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)),
    ("num_warps", (1, 2, 4, 8, 16)),
))
_MAX_PER_THREAD = 64  # fp32 values of one [ROWS, BLOCK] tile per thread: more spills registers


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def row_valid(config: Config, rows: int, cols: int) -> bool:
    """A row-kernel config fits: no tile dim beyond the next power of two of its extent, 1..64 values per
    thread, and the looped path (BLOCK < cols) only for rows wider than 1024."""
    if not ROW_SPACE.contains(config):
        return False
    r, b, w = config["ROWS"], config["BLOCK"], config["num_warps"]
    if r > next_pow2(max(rows, 1)) or b > max(16, next_pow2(cols)):
        return False
    if b < cols and cols <= 1024:
        return False
    per_thread = r * b / (32 * w)
    return 1 <= per_thread <= _MAX_PER_THREAD or (r * b <= 32 and w == 1)


def row_default(rows: int, cols: int, gpu: GpuInfo) -> Config:
    """One pass for rows up to 8192 wide (else 4096-wide chunks); tiles of ~2048+ values, 8-32 per thread,
    few enough rows per program that the grid covers every SM twice."""
    block = max(16, next_pow2(cols)) if cols <= 8192 else 4096
    r = 1
    while r < 16 and r * block < 2048 and r < next_pow2(rows) and -(-rows // (2 * r)) >= 2 * gpu.sm_count:
        r *= 2
    warps = max(1, min(8, r * block // 256))
    return {"ROWS": r, "BLOCK": block, "num_warps": warps}


def _holes(problem: Problem) -> dict:
    for k in ("dtype", "w_dtype"):
        dtype_of(problem[k])
    return {"rows": int(problem["rows"]), "cols": int(problem["cols"]), "dtype": problem["dtype"],
            "w_dtype": problem["w_dtype"], "residual": bool(problem["residual"])}


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    return row_valid(config, problem["rows"], problem["cols"])


def default(problem: Problem, gpu: GpuInfo) -> Config:
    return row_default(problem["rows"], problem["cols"], gpu)


def make_inputs(problem: Problem, device, gen: torch.Generator):
    """x and r are views with a padded row stride (cols + 8), as slices of a wider activation would be."""
    rows, cols, dt = problem["rows"], problem["cols"], dtype_of(problem["dtype"])

    def strided() -> torch.Tensor:
        return randn((rows, cols + 8), dt, device, gen)[:, :cols]

    y = torch.full((rows, cols), float("nan"), dtype=dt, device=device)
    x = strided()
    w = randn((cols,), dtype_of(problem["w_dtype"]), device, gen, std=0.5) + 1.0
    if problem["residual"]:
        h = torch.full((rows, cols), float("nan"), dtype=dt, device=device)
        return [y, h], [x, w, strided()]
    return [y], [x, w]


def reference(problem: Problem, ins: list) -> list:
    """y = h * rsqrt(mean(h^2) + eps) * w in float64, h = x + r rounded to the input dtype (eager)."""
    x = ins[0].detach().cpu()
    w = ins[1].detach().cpu().to(torch.float64)
    h = (x.float() + ins[2].detach().cpu().float()).to(x.dtype) if problem["residual"] else x
    hd = h.to(torch.float64)
    y = hd * torch.rsqrt(hd.pow(2).mean(dim=-1, keepdim=True) + problem["eps"]) * w
    return [y, hd] if problem["residual"] else [y]


def launch_kwargs(problem: Problem) -> dict:
    return {"eps": float(problem["eps"])}


def cost(problem: Problem) -> tuple[float, float]:
    rows, cols = problem["rows"], problem["cols"]
    size = dtype_of(problem["dtype"]).itemsize
    tensors = 4 if problem["residual"] else 2  # x, y (+ r, h)
    w_bytes = cols * dtype_of(problem["w_dtype"]).itemsize
    return float(4 * rows * cols), float(tensors * rows * cols * size + w_bytes)


TEMPLATE = Template(
    name="rmsnorm", file="rmsnorm.py.j2", space=ROW_SPACE, holes=_holes, valid=valid, default=default,
    make_inputs=make_inputs, reference=reference, launch_kwargs=launch_kwargs, cost=cost,
    token_dims=("rows",),
)

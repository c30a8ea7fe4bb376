"""Softmax template: y = softmax(x * scale, dim=-1) per row, fp32 math; the passes emit the problem, this
module renders softmax.py.j2 and gives the tuner the row-kernel search space (shared with rmsnorm.py), a
default and the reference.

Problem: {"rows", "cols", "dtype", "scale"}; launch(y, x, scale=..., ROWS, BLOCK, num_warps).
"""

from __future__ import annotations

import torch

from ds4c.device import GpuInfo

from .base import Config, Problem, Template, dtype_of, randn
from .rmsnorm import ROW_SPACE, row_default, row_valid


def _holes(problem: Problem) -> dict:
    dtype_of(problem["dtype"])
    return {"rows": int(problem["rows"]), "cols": int(problem["cols"]), "dtype": problem["dtype"]}


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    return row_valid(config, problem["rows"], problem["cols"])


def default(problem: Problem, gpu: GpuInfo) -> Config:
    return row_default(problem["rows"], problem["cols"], gpu)


def make_inputs(problem: Problem, device, gen: torch.Generator):
    """x is a view with a padded row stride (cols + 8); std 3 gives peaked rows, as attention scores have."""
    rows, cols, dt = problem["rows"], problem["cols"], dtype_of(problem["dtype"])
    x = randn((rows, cols + 8), dt, device, gen, std=3.0)[:, :cols]
    y = torch.full((rows, cols), float("nan"), dtype=dt, device=device)
    return [y], [x]


def reference(problem: Problem, ins: list) -> list:
    x = ins[0].detach().cpu().to(torch.float64)
    return [torch.softmax(x * problem["scale"], dim=-1)]


def launch_kwargs(problem: Problem) -> dict:
    return {"scale": float(problem["scale"])}


def cost(problem: Problem) -> tuple[float, float]:
    n = problem["rows"] * problem["cols"]
    return float(5 * n), float(2 * n * dtype_of(problem["dtype"]).itemsize)


TEMPLATE = Template(
    name="softmax", file="softmax.py.j2", space=ROW_SPACE, holes=_holes, valid=valid, default=default,
    make_inputs=make_inputs, reference=reference, launch_kwargs=launch_kwargs, cost=cost,
    token_dims=("rows",),
)

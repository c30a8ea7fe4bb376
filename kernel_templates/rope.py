"""Rotary-embedding template (Hugging Face rotate-half layout): the attention passes emit the problem for q
and k after their projections; this module renders rope.py.j2 and gives the tuner the search space, a
default and the reference.

Problem: {"B", "H", "T", "D", "dtype", "cos_dtype"}; launch(y, x, cos, sin, BLOCK_R, num_warps) with
x [B, H, T, D] (any strides, unit stride on D), cos/sin [T, D] contiguous, y [B, H, T, D] contiguous.
"""

from __future__ import annotations

import torch

from ds4c.device import GpuInfo

from .base import Config, Problem, SearchSpace, Template, dtype_of, randn
from .rmsnorm import next_pow2

SPACE = SearchSpace((
    ("BLOCK_R", (1, 2, 4, 8, 16, 32, 64)),
    ("num_warps", (1, 2, 4, 8)),
))


def _rows(problem: Problem) -> int:
    return problem["B"] * problem["H"] * problem["T"]


def block_d(problem: Problem) -> int:
    """The power-of-2 tile over half a head (at least 16)."""
    return max(16, next_pow2(problem["D"] // 2))


def _holes(problem: Problem) -> dict:
    if problem["D"] % 2:
        raise ValueError(f"rope needs an even head dim, got {problem['D']}")
    dtype_of(problem["dtype"])
    dtype_of(problem["cos_dtype"])
    keys = ("B", "H", "T", "D", "dtype", "cos_dtype")
    return {k: problem[k] for k in keys} | {"block_d": block_d(problem)}


def valid_tile(config: Config, rows: int, half_tile: int) -> bool:
    """1..64 values of each half tile per thread (one warp may hold fewer), no more rows than exist."""
    if not SPACE.contains(config):
        return False
    r, w = config["BLOCK_R"], config["num_warps"]
    if r > next_pow2(max(1, rows)):
        return False
    per_thread = r * half_tile / (32 * w)
    return 1 <= per_thread <= 64 or (w == 1 and per_thread < 1)


def default_tile(rows: int, half_tile: int, gpu: GpuInfo) -> Config:
    """Tiles of ~2048 values per half (16-byte loads at 8 warps), fewer rows while the grid would leave SMs
    idle."""
    rows = max(1, rows)
    r = 1
    while r < 64 and r * half_tile < 2048 and r < next_pow2(rows) and -(-rows // (2 * r)) >= 2 * gpu.sm_count:
        r *= 2
    return {"BLOCK_R": r, "num_warps": max(1, min(8, r * half_tile // 256))}


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    return valid_tile(config, _rows(problem), block_d(problem))


def default(problem: Problem, gpu: GpuInfo) -> Config:
    return default_tile(_rows(problem), block_d(problem), gpu)


def rope_tables(T: int, D: int, dtype: torch.dtype, offset: int = 0, base: float = 500000.0):
    """cos, sin [T, D] for positions offset..offset+T-1, halves duplicated as Hugging Face builds them."""
    inv_freq = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def make_inputs(problem: Problem, device, gen: torch.Generator):
    """x is the [B, H, T, D] transpose of a [B, T, H, D] projection output, as attention layers make it;
    positions start at a random offset."""
    B, H, T, D = (problem[k] for k in ("B", "H", "T", "D"))
    dt = dtype_of(problem["dtype"])
    x = randn((B, T, H, D), dt, device, gen).transpose(1, 2)
    offset = int(torch.randint(0, 4096, (1,), generator=gen))
    cos, sin = rope_tables(T, D, dtype_of(problem["cos_dtype"]), offset)
    y = torch.full((B, H, T, D), float("nan"), dtype=dt, device=device)
    return [y], [x, cos.to(device), sin.to(device)]


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin over the last dim, in x's dtype (the references pass fp64)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def reference(problem: Problem, ins: list) -> list:
    x, cos, sin = (t.detach().cpu().to(torch.float64) for t in ins)
    return [rope_reference(x, cos, sin)]


def launch_kwargs(problem: Problem) -> dict:
    return {}


def cost(problem: Problem) -> tuple[float, float]:
    n = _rows(problem) * problem["D"]
    table = 2 * problem["T"] * problem["D"] * dtype_of(problem["cos_dtype"]).itemsize
    return float(3 * n), float(2 * n * dtype_of(problem["dtype"]).itemsize + table)


TEMPLATE = Template(
    name="rope", file="rope.py.j2", space=SPACE, holes=_holes, valid=valid, default=default,
    make_inputs=make_inputs, reference=reference, launch_kwargs=launch_kwargs, cost=cost,
    token_dims=("T",),
)

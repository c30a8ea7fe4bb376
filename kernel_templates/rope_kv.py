"""Rotary embedding of q and k with the KV-cache write, in one launch (Hugging Face rotate-half layout): the
attention step's q = rope(q); k_cache[:, :, pos] = rope(k); v_cache[:, :, pos] = v. It replaces two rope
kernels and two index_copy_ writes per layer (passes/rope.py, fuse_rope_kv_write), and renders
rope_kv.py.j2.

Problem: {"B", "Hq", "Hkv", "T", "D", "S_max", "dtype", "cos_dtype"}, and optionally "k_out": bool and
"bthd": bool (both default False).
launch(q_out, [k_out,] k_cache, v_cache, q, k, v, cos, sin, pos, BLOCK_R, num_warps): q [B,Hq,T,D], k and v
[B,Hkv,T,D] (any strides, unit stride on D); cos/sin [T, D] contiguous; pos int64 [T] on the device (cache
positions, each < S_max); caches [B,Hkv,S_max,D] (unit stride on D), written in place at pos only; q_out
[B,Hq,T,D] contiguous. pos is never read on the host, so the launch may sit in a CUDA graph.

With k_out the rotated k also goes to its own output k_out [B,Hkv,T,D] contiguous, for an attention that reads
k itself rather than the cache (prefill). With bthd, q_out and k_out are [B,T,H,D] contiguous instead: the
layout of the projection outputs, which attention libraries read and write without a transpose.
"""

from __future__ import annotations

import torch

from ds4c.device import GpuInfo

from .base import Config, Problem, Template, dtype_of, randn
from .rope import SPACE, block_d, default_tile, rope_reference, rope_tables, valid_tile

KEYS = ("B", "Hq", "Hkv", "T", "D", "S_max", "dtype", "cos_dtype")
FLAGS = ("k_out", "bthd")  # optional, default False


def _rows(problem: Problem) -> int:
    return problem["B"] * (problem["Hq"] + problem["Hkv"]) * problem["T"]


def _holes(problem: Problem) -> dict:
    if not set(KEYS) <= set(problem) <= set(KEYS + FLAGS):
        raise ValueError(f"a rope_kv problem has the keys {KEYS}, and optionally {FLAGS}")
    if problem["D"] % 2:
        raise ValueError(f"rope needs an even head dim, got {problem['D']}")
    if problem["T"] > problem["S_max"]:
        raise ValueError(f"{problem['T']} positions do not fit a cache of {problem['S_max']}")
    dtype_of(problem["dtype"])
    dtype_of(problem["cos_dtype"])
    return ({k: problem[k] for k in KEYS} | {f: bool(problem.get(f, False)) for f in FLAGS}
            | {"block_d": block_d(problem)})


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    """As rope's, over the rows of q and k together."""
    return valid_tile(config, _rows(problem), block_d(problem))


def default(problem: Problem, gpu: GpuInfo) -> Config:
    return default_tile(_rows(problem), block_d(problem), gpu)


def _fresh_shape(problem: Problem, heads: int) -> tuple:
    B, T, D = problem["B"], problem["T"], problem["D"]
    return (B, T, heads, D) if problem.get("bthd") else (B, heads, T, D)


def make_inputs(problem: Problem, device, gen: torch.Generator):
    """q, k, v as the [B, H, T, D] transposes of projection outputs; T distinct cache positions from a random
    offset (not necessarily in order); every output poisoned (NaN), the caches included, so a write outside
    pos shows. Outputs: q_out, [k_out,] k_cache, v_cache."""
    B, Hq, Hkv, T, D, S = (problem[k] for k in ("B", "Hq", "Hkv", "T", "D", "S_max"))
    dt = dtype_of(problem["dtype"])
    q = randn((B, T, Hq, D), dt, device, gen).transpose(1, 2)
    k = randn((B, T, Hkv, D), dt, device, gen).transpose(1, 2)
    v = randn((B, T, Hkv, D), dt, device, gen).transpose(1, 2)
    offset = int(torch.randint(0, S - T + 1, (1,), generator=gen))
    cos, sin = rope_tables(T, D, dtype_of(problem["cos_dtype"]), offset)
    pos = (offset + torch.randperm(T, generator=gen)) if T > 1 else torch.tensor([offset])
    cos, sin = cos[pos - offset], sin[pos - offset]  # row t belongs to token t, at position pos[t]
    fresh = [_fresh_shape(problem, Hq)] + ([_fresh_shape(problem, Hkv)] if problem.get("k_out") else [])
    outs = [torch.full(shape, float("nan"), dtype=dt, device=device) for shape in fresh]
    outs += [torch.full((B, Hkv, S, D), float("nan"), dtype=dt, device=device) for _ in range(2)]
    return outs, [q, k, v, cos.contiguous().to(device), sin.contiguous().to(device), pos.to(device)]


def reference(problem: Problem, ins: list) -> list:
    """q_out, [k_out,] and the caches as they must be: rows at pos written, every other row still NaN
    (untouched)."""
    q, k, v, cos, sin = (t.detach().cpu().to(torch.float64) for t in ins[:5])
    pos = ins[5].detach().cpu()
    B, Hkv, S, D = problem["B"], problem["Hkv"], problem["S_max"], problem["D"]
    kc = torch.full((B, Hkv, S, D), float("nan"), dtype=torch.float64)
    vc = torch.full((B, Hkv, S, D), float("nan"), dtype=torch.float64)
    kc[:, :, pos] = rope_reference(k, cos, sin)
    vc[:, :, pos] = v
    rq, rk = rope_reference(q, cos, sin), rope_reference(k, cos, sin)
    fresh = [rq, rk] if problem.get("k_out") else [rq]
    if problem.get("bthd"):
        fresh = [x.transpose(1, 2).contiguous() for x in fresh]
    return fresh + [kc, vc]


def launch_kwargs(problem: Problem) -> dict:
    return {}


def cost(problem: Problem) -> tuple[float, float]:
    B, Hq, Hkv, T, D = (problem[k] for k in ("B", "Hq", "Hkv", "T", "D"))
    es = dtype_of(problem["dtype"]).itemsize
    table = 2 * T * D * dtype_of(problem["cos_dtype"]).itemsize
    nq, nkv = B * Hq * T * D, B * Hkv * T * D
    k_out = es * nkv if problem.get("k_out") else 0
    return float(3 * (nq + nkv)), float(es * (2 * nq + 4 * nkv) + k_out + table + 8 * T)


TEMPLATE = Template(
    name="rope_kv", file="rope_kv.py.j2", space=SPACE, holes=_holes, valid=valid, default=default,
    make_inputs=make_inputs, reference=reference, launch_kwargs=launch_kwargs, cost=cost, writes=2,
    token_dims=("T", "S_max"),
)

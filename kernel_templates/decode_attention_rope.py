"""Decode attention with the step's rotary embedding and KV-cache write folded in: one query token rotated,
its key rotated and written with its value into the static cache at pos, then split-KV attention over the
cache's first kv_len positions, the new key and value taken from registers. It replaces a decode step's
`rope_kv` and `decode_attention` kernels (passes/rope.py, fuse_rope_into_decode_attention); the source is
decode_attention.py.j2 with its `rope` hole set, and the tiles are decode_attention's.

Problem: decode_attention's {"B", "Hq", "Hkv", "S_max", "D", "dtype", "scale"} and "cos_dtype".
launch(o, k_cache, v_cache, q, k, v, cos, sin, pos, kv_len, scale=..., **config): q [B,Hq,1,D], k and v
[B,Hkv,1,D] unrotated (unit stride on D), cos/sin [1, D] (the tables at pos), pos and kv_len one-element
int32/int64 tensors on the device; the caches [B,Hkv,S_max,D] are written at pos only. In a plan the caches
are the kernel's first args, written in place (IR invariant 7). Here they are inputs like any other: the
attention reads their rows below kv_len, so the reference needs them, and the tuner must not poison them.
The reference gives o; tests/kernels/test_decode_attention_rope.py checks the cache rows.
"""

from __future__ import annotations

import torch

from ds4c.device import GpuInfo

from . import decode_attention as A
from .base import Config, Problem, Template, dtype_of, randn
from .flash_attention import attention_reference
from .rope import rope_reference, rope_tables

KEYS = A.KEYS | {"cos_dtype"}


def attention_problem(problem: Problem) -> Problem:
    """The decode_attention problem inside (its tiles and limits are this template's)."""
    if set(problem) != KEYS:
        raise ValueError(f"decode_attention_rope problem needs the keys {sorted(KEYS)}, got {sorted(problem)}")
    if problem["D"] % 2:
        raise ValueError(f"rope needs an even head dim, got {problem['D']}")
    dtype_of(problem["cos_dtype"])
    return {k: v for k, v in problem.items() if k != "cos_dtype"}


def _holes(problem: Problem) -> dict:
    A.check_problem(attention_problem(problem))
    return {"rope": True}


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    return A.valid(config, attention_problem(problem), gpu)


def default(problem: Problem, gpu: GpuInfo) -> Config:
    return A.default(attention_problem(problem), gpu)


def make_inputs(problem: Problem, device: torch.device, gen: torch.Generator) -> tuple[list, list]:
    """A random kv_len in [1, S_max] and pos = kv_len - 1, as a decode step has them; cache rows below pos
    random, the others NaN (row pos too: the kernel must write it and never read it); q, k, v as the
    [B, H, 1, D] transposes of projection outputs; o poisoned (NaN)."""
    p = attention_problem(problem)
    B, Hq, Hkv, S, D = (p[k] for k in ("B", "Hq", "Hkv", "S_max", "D"))
    dt = dtype_of(p["dtype"])
    n = int(torch.randint(1, S + 1, (1,), generator=gen).item())
    q = randn((B, 1, Hq, D), dt, device, gen).transpose(1, 2)
    k = randn((B, 1, Hkv, D), dt, device, gen).transpose(1, 2)
    v = randn((B, 1, Hkv, D), dt, device, gen).transpose(1, 2)
    k_cache = randn((B, Hkv, S, D), dt, device, gen)
    v_cache = randn((B, Hkv, S, D), dt, device, gen)
    k_cache[:, :, n - 1:] = float("nan")
    v_cache[:, :, n - 1:] = float("nan")
    cos, sin = (t.to(device) for t in rope_tables(1, D, dtype_of(problem["cos_dtype"]), offset=n - 1))
    as_tensor = lambda i: torch.tensor([i], dtype=torch.int64, device=device)  # noqa: E731
    o = torch.full((B, Hq, 1, D), float("nan"), dtype=dt, device=device)
    return [o], [k_cache, v_cache, q, k, v, cos, sin, as_tensor(n - 1), as_tensor(n)]


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().to(torch.float64)


def written_rows(problem: Problem, ins: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(rotated k, v, pos) in fp64 on CPU: the rows the kernel writes into the caches at pos."""
    _, _, _, k, v, cos, sin, pos, _ = ins
    return rope_reference(_f64(k), _f64(cos).reshape(-1), _f64(sin).reshape(-1)), _f64(v), int(pos.item())


def reference(problem: Problem, ins: list) -> list:
    """o in fp64 from the cache rows other than pos and the rotated q, k and v at pos (the caches as
    launched or as left after the launch: only row pos differs)."""
    k_cache, v_cache, q, _, _, cos, sin, _, kv_len = ins
    rk, v_new, pos = written_rows(problem, ins)
    kc, vc = _f64(k_cache).clone(), _f64(v_cache).clone()
    kc[:, :, pos] = rk[:, :, 0]
    vc[:, :, pos] = v_new[:, :, 0]
    rq = rope_reference(_f64(q), _f64(cos).reshape(-1), _f64(sin).reshape(-1))
    o = attention_reference(rq, kc.nan_to_num(0.0), vc, problem["scale"], causal=False, kv_len=int(kv_len.item()))
    return [o]


def cost(problem: Problem) -> tuple[float, float]:
    """decode_attention's at a full cache, plus the new key and value read and written and the tables."""
    p = attention_problem(problem)
    flops, nbytes = A.cost(p)
    es, ts = dtype_of(p["dtype"]).itemsize, dtype_of(problem["cos_dtype"]).itemsize
    return flops, nbytes + 4.0 * es * p["B"] * p["Hkv"] * p["D"] + 2.0 * ts * p["D"]


TEMPLATE = Template(
    name="decode_attention_rope",
    file="decode_attention.py.j2",
    space=A.SPACE,
    holes=_holes,
    valid=valid,
    default=default,
    make_inputs=make_inputs,
    reference=reference,
    launch_kwargs=A.launch_kwargs,
    cost=cost,
    token_dims=("S_max",),
)

"""Decode attention template: one query token per sequence against a static KV cache, split over the keys
("flash-decoding") and merged by log-sum-exp. The attention pass emits the problem for decode graphs; this
module gives the tuner the search space, validity predicate, Hopper default, reference and input maker for
decode_attention.py.j2.

Problem: {"B", "Hq", "Hkv", "S_max", "D", "dtype", "scale"}.
launch(o, q, k_cache, v_cache, kv_len, scale=..., **config): q [B,Hq,1,D], caches [B,Hkv,S_max,D] (any
strides, unit stride on D), kv_len a one-element int32/int64 tensor on the device (keys j < kv_len are
attended), o [B,Hq,1,D] contiguous. kv_len is never read on the host, so the launch may sit in a CUDA graph.
"""

from __future__ import annotations

import torch

from ds4c.device import GpuInfo
from ds4c.kernel_templates.base import Config, Problem, SearchSpace, Template, dtype_of, randn
from ds4c.kernel_templates.flash_attention import DTYPES, attention_reference, head_dim_ok

SPACE = SearchSpace((
    ("BLOCK_S", (16, 32, 64, 128, 256, 512, 1024)),
    ("BLOCK_N", (16, 32, 64, 128)),
    ("num_warps", (1, 2, 4, 8)),
    ("num_stages", (1, 2, 3, 4)),
))

KEYS = {"B", "Hq", "Hkv", "S_max", "D", "dtype", "scale"}
_MIN_ROWS = 16  # query rows per program are padded to this for tl.dot
_MAX_REGS_PER_THREAD = 192


def check_problem(problem: Problem) -> None:
    """Raise ValueError for a problem the kernel cannot compute."""
    if set(problem) != KEYS:
        raise ValueError(f"decode_attention problem needs the keys {sorted(KEYS)}, got {sorted(problem)}")
    if problem["dtype"] not in DTYPES:
        raise ValueError(f"decode_attention takes {DTYPES}, not {problem['dtype']!r}")
    if problem["Hkv"] < 1 or problem["Hq"] % problem["Hkv"] != 0:
        raise ValueError(f"Hq={problem['Hq']} must be a multiple of Hkv={problem['Hkv']}")
    if not head_dim_ok(problem["D"]):
        raise ValueError(f"head dim D={problem['D']} must be a power of 2 in 16..256")
    if problem["S_max"] < 1:
        raise ValueError("S_max must be >= 1")


def _holes(problem: Problem) -> dict:
    check_problem(problem)
    return {"rope": False}


def _rows(problem: Problem) -> int:
    g = problem["Hq"] // problem["Hkv"]
    return max(_MIN_ROWS, 1 << (g - 1).bit_length())


def smem_bytes(config: Config, problem: Problem) -> int:
    """Shared memory: K and V tiles per pipeline stage plus the padded query tile."""
    es = dtype_of(problem["dtype"]).itemsize
    d = problem["D"]
    return es * d * (2 * config["BLOCK_N"] * max(1, config["num_stages"]) + _rows(problem))


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    if not SPACE.contains(config) or not head_dim_ok(problem["D"]):
        return False
    bs, bn, warps = config["BLOCK_S"], config["BLOCK_N"], config["num_warps"]
    if bn > bs or bs > max(16, 1 << (problem["S_max"] - 1).bit_length()):
        return False
    if smem_bytes(config, problem) > gpu.smem_per_block:
        return False
    # K^T and V tiles, the query tile, the fp32 accumulator and scores, spread over the program's threads
    d, rows = problem["D"], _rows(problem)
    if 2 * bn * d + 2 * rows * d + rows * bn > _MAX_REGS_PER_THREAD * 32 * warps:
        return False
    return True


def default(problem: Problem, gpu: GpuInfo) -> Config:
    """Memory-bound heuristic: enough splits for ~2 programs per SM at S_max (fewer keys per split when the
    batch and kv heads alone do not fill the GPU), 64-key inner steps, 4 warps, 2 stages."""
    s_max = problem["S_max"]
    heads = problem["B"] * problem["Hkv"]
    target_splits = max(1, (2 * gpu.sm_count) // max(1, heads))
    per_split = max(1, s_max // target_splits)
    bs = 1 << (per_split.bit_length() - 1)  # round down to a power of 2
    bs = min(1024, max(64, bs))
    bs = min(bs, max(16, 1 << (s_max - 1).bit_length()))
    bn = min(64, bs)
    warps = 8 if problem["D"] >= 256 else 4
    config = {"BLOCK_S": bs, "BLOCK_N": bn, "num_warps": warps, "num_stages": 2}
    while not valid(config, problem, gpu) and (config["num_stages"] > 1 or config["BLOCK_N"] > 16):
        if config["num_stages"] > 1:
            config["num_stages"] -= 1
        else:
            config["BLOCK_N"] //= 2
    return config


def make_inputs(problem: Problem, device: torch.device, gen: torch.Generator) -> tuple[list, list]:
    """Random q ([B,1,Hq,D] viewed as [B,Hq,1,D]) and caches, a random kv_len in [1, S_max]; cache positions
    >= kv_len hold NaN so a kernel that lets them into the result fails; o poisoned (NaN)."""
    check_problem(problem)
    B, Hq, Hkv, S, D = (problem[k] for k in ("B", "Hq", "Hkv", "S_max", "D"))
    dt = dtype_of(problem["dtype"])
    n = int(torch.randint(1, S + 1, (1,), generator=gen).item())
    q = randn((B, 1, Hq, D), dt, device, gen).transpose(1, 2)
    k = randn((B, Hkv, S, D), dt, device, gen)
    v = randn((B, Hkv, S, D), dt, device, gen)
    k[:, :, n:] = float("nan")
    v[:, :, n:] = float("nan")
    kv_len = torch.tensor([n], dtype=torch.int64, device=device)
    o = torch.full((B, Hq, 1, D), float("nan"), dtype=dt, device=device)
    return [o], [q, k, v, kv_len]


def reference(problem: Problem, ins: list) -> list:
    q, k, v, kv_len = ins
    n = int(kv_len.reshape(-1)[0].item())
    return [attention_reference(q, k.nan_to_num(0.0), v, problem["scale"], causal=False, kv_len=n)]


def launch_kwargs(problem: Problem) -> dict:
    return {"scale": float(problem["scale"])}


def bytes_moved(problem: Problem, kv_len: int) -> float:
    """Minimum bytes for one call: kv_len positions of K and V, q in, o out."""
    es = dtype_of(problem["dtype"]).itemsize
    B, Hq, Hkv, D = (problem[k] for k in ("B", "Hq", "Hkv", "D"))
    return float(es * B * D * (2 * Hkv * kv_len + 2 * Hq))


def cost(problem: Problem) -> tuple[float, float]:
    """(flops, minimum bytes) at a full cache (kv_len = S_max); use bytes_moved for a shorter kv_len."""
    B, Hq, S, D = (problem[k] for k in ("B", "Hq", "S_max", "D"))
    return 4.0 * B * Hq * S * D, bytes_moved(problem, S)


TEMPLATE = Template(
    name="decode_attention",
    file="decode_attention.py.j2",
    space=SPACE,
    holes=_holes,
    valid=valid,
    default=default,
    make_inputs=make_inputs,
    reference=reference,
    launch_kwargs=launch_kwargs,
    cost=cost,
    token_dims=("S_max",),
)

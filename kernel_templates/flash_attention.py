"""Flash attention template (prefill): causal or full attention with grouped-query heads. The attention pass
emits the problem; this module gives the tuner the search space, validity predicate, Hopper default,
torch reference and input maker for flash_attention.py.j2.

Problem: {"B", "Hq", "Hkv", "T", "S", "D", "dtype", "causal": bool, "scale": float}, and optionally
"o_bthd": bool (default False).
launch(o, q, k, v, scale=..., **config): q [B,Hq,T,D], k and v [B,Hkv,S,D] (any strides, unit stride on D),
o [B,Hq,T,D] contiguous, or with o_bthd [B,T,Hq,D] contiguous: the layout the output projection reads, so
the transpose after attention is no copy. Query head h reads kv head h // (Hq // Hkv). Causal: query i sees
keys j <= i + (S - T); a query row that sees no key at all is zero.

Config IMPL picks the implementation: 0 the Triton kernel; 1 and 2 torch's scaled_dot_product_attention
through cuDNN and through its FlashAttention-2 kernel (the math backend when interpreting, on the CPU), then
one copy into o. The tuner weighs them like any other config, as it weighs cuBLAS against the matmul tiles.
"""

from __future__ import annotations

import torch

from ds4c.device import GpuInfo
from ds4c.kernel_templates.base import Config, Problem, SearchSpace, Template, dtype_of, randn

SPACE = SearchSpace((
    ("BLOCK_M", (16, 32, 64, 128)),
    ("BLOCK_N", (16, 32, 64, 128)),
    ("num_warps", (2, 4, 8)),
    ("num_stages", (1, 2, 3, 4)),
    ("IMPL", (0, 1, 2)),  # 0: the Triton kernel; 1: torch SDPA via cuDNN; 2: torch SDPA via FlashAttention-2
))
# IMPL 1 and 2 ignore the tile parameters: each has one valid config, carrying these values for them.
VENDOR_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}

DTYPES = ("float32", "float16", "bfloat16")
_MAX_REGS_PER_THREAD = 192  # fp32 accumulator + score tile per thread; beyond this it spills


def _holes(problem: Problem) -> dict:
    check_problem(problem)
    return {"causal": bool(problem["causal"]), "o_bthd": bool(problem.get("o_bthd", False))}


def check_problem(problem: Problem) -> None:
    """Raise ValueError for a problem the kernel cannot compute (wrong keys, head counts, dtype, D)."""
    keys = {"B", "Hq", "Hkv", "T", "S", "D", "dtype", "causal", "scale"}
    if not keys <= set(problem) <= keys | {"o_bthd"}:
        raise ValueError(f"flash_attention problem needs the keys {sorted(keys)} (and optionally o_bthd), "
                         f"got {sorted(problem)}")
    if problem["dtype"] not in DTYPES:
        raise ValueError(f"flash_attention takes {DTYPES}, not {problem['dtype']!r}")
    if problem["Hkv"] < 1 or problem["Hq"] % problem["Hkv"] != 0:
        raise ValueError(f"Hq={problem['Hq']} must be a multiple of Hkv={problem['Hkv']}")
    if not head_dim_ok(problem["D"]):
        raise ValueError(f"head dim D={problem['D']} must be a power of 2 in 16..256")


def head_dim_ok(d: int) -> bool:
    return 16 <= d <= 256 and d & (d - 1) == 0


def smem_bytes(config: Config, problem: Problem) -> int:
    """Shared memory the compiled kernel needs: the Q tile, plus K and V tiles per pipeline stage."""
    es = dtype_of(problem["dtype"]).itemsize
    d = problem["D"]
    q_tile = config["BLOCK_M"] * d * es
    kv_tiles = 2 * config["BLOCK_N"] * d * es * max(1, config["num_stages"])
    return q_tile + kv_tiles


def vendor_ok(problem: Problem, gpu: GpuInfo) -> bool:
    """torch's fused SDPA kernels take the problem: 16-bit inputs on a GPU (the interpreter's CPU runs the
    math backend, any dtype), and a causal mask only when T == S (SDPA aligns it top-left, not bottom-right)."""
    if problem["causal"] and problem["T"] != problem["S"]:
        return False
    return gpu.is_interpreter or problem["dtype"] in ("float16", "bfloat16")


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    if not SPACE.contains(config) or not head_dim_ok(problem["D"]):
        return False
    if config["IMPL"] != 0:
        return all(config[k] == v for k, v in VENDOR_TILES.items()) and vendor_ok(problem, gpu)
    bm, bn, warps = config["BLOCK_M"], config["BLOCK_N"], config["num_warps"]
    if smem_bytes(config, problem) > gpu.smem_per_block:
        return False
    # accumulator [BLOCK_M, D] and scores [BLOCK_M, BLOCK_N] live in registers, in fp32
    if bm * (problem["D"] + bn) > _MAX_REGS_PER_THREAD * 32 * warps:
        return False
    # tiles far longer than the sequence only waste work
    if bm > max(16, _next_pow2(problem["T"])) or bn > max(16, _next_pow2(problem["S"])):
        return False
    return True


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def default(problem: Problem, gpu: GpuInfo) -> Config:
    """Hopper-minded heuristic: 128-row tiles with 8 warps for D >= 128, smaller tiles for short sequences,
    fp32 and D=256 halve the tiles to fit shared memory and registers."""
    d = problem["D"]
    wide = d >= 128 or problem["dtype"] == "float32"
    bm = 128
    bn = 32 if d >= 256 else 64
    warps = 8 if wide else 4
    stages = 2 if d >= 256 or problem["dtype"] == "float32" else 3
    bm = min(bm, max(16, _next_pow2(problem["T"])))
    bn = min(bn, max(16, _next_pow2(problem["S"])))
    if bm < 64:
        warps = 4
    config = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages, "IMPL": 0}
    # shrink until it fits this GPU (small shared memory, huge D in fp32)
    while not valid(config, problem, gpu) and (config["num_stages"] > 1 or config["BLOCK_M"] > 16):
        if config["num_stages"] > 1:
            config["num_stages"] -= 1
        else:
            config["BLOCK_M"] //= 2
            config["BLOCK_N"] = max(16, config["BLOCK_N"] // 2)
    return config


def make_inputs(problem: Problem, device: torch.device, gen: torch.Generator) -> tuple[list, list]:
    """Random q/k/v laid out as projections produce them ([B,T,H,D] viewed as [B,H,T,D]); o poisoned (NaN)."""
    check_problem(problem)
    B, Hq, Hkv, T, S, D = (problem[k] for k in ("B", "Hq", "Hkv", "T", "S", "D"))
    dt = dtype_of(problem["dtype"])
    q = randn((B, T, Hq, D), dt, device, gen).transpose(1, 2)
    k = randn((B, S, Hkv, D), dt, device, gen).transpose(1, 2)
    v = randn((B, S, Hkv, D), dt, device, gen).transpose(1, 2)
    o_shape = (B, T, Hq, D) if problem.get("o_bthd") else (B, Hq, T, D)
    o = torch.full(o_shape, float("nan"), dtype=dt, device=device)
    return [o], [q, k, v]


def attention_reference(q, k, v, scale: float, causal: bool, kv_len: int | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v in fp32 with GQA head mapping, causal rule j <= i + (S - T), keys j < kv_len.
    Rows that see no key are zero. Shared with the decode template."""
    qf, kf, vf = (x.to(torch.float32) for x in (q, k, v))
    group = qf.shape[1] // kf.shape[1]
    kf = kf.repeat_interleave(group, dim=1)
    vf = vf.repeat_interleave(group, dim=1)
    T, S = qf.shape[2], kf.shape[2]
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    i = torch.arange(T, device=qf.device)[:, None]
    j = torch.arange(S, device=qf.device)[None, :]
    keep = torch.ones(T, S, dtype=torch.bool, device=qf.device)
    if causal:
        keep &= j <= i + (S - T)
    if kv_len is not None:
        keep &= j < kv_len
        vf = torch.where((j < kv_len).reshape(1, 1, S, 1), vf, 0.0)  # positions past kv_len hold poison
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> zeros
    return torch.matmul(probs, vf)


def reference(problem: Problem, ins: list) -> list:
    q, k, v = ins
    o = attention_reference(q, k, v, problem["scale"], problem["causal"])
    return [o.transpose(1, 2).contiguous() if problem.get("o_bthd") else o]


def launch_kwargs(problem: Problem) -> dict:
    return {"scale": float(problem["scale"])}


def visible_pairs(problem: Problem) -> int:
    """Number of (query, key) pairs the mask keeps, per head."""
    T, S = problem["T"], problem["S"]
    if not problem["causal"]:
        return T * S
    # row i sees min(S, max(0, i + S - T + 1)) keys
    return sum(min(S, max(0, i + S - T + 1)) for i in range(T))


def cost(problem: Problem) -> tuple[float, float]:
    """(flops, minimum bytes): 4 D flops per visible pair per query head (QK^T and PV); q, k, v, o once."""
    B, Hq, Hkv, T, S, D = (problem[k] for k in ("B", "Hq", "Hkv", "T", "S", "D"))
    es = dtype_of(problem["dtype"]).itemsize
    flops = 4.0 * B * Hq * D * visible_pairs(problem)
    nbytes = es * B * D * (2 * Hq * T + 2 * Hkv * S)
    return flops, float(nbytes)


TEMPLATE = Template(
    name="flash_attention",
    file="flash_attention.py.j2",
    space=SPACE,
    holes=_holes,
    valid=valid,
    default=default,
    make_inputs=make_inputs,
    reference=reference,
    launch_kwargs=launch_kwargs,
    cost=cost,
    token_dims=("T", "S"),
)

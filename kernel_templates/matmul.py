"""matmul template: tensor-core tiles (tl.dot) of out = epilogue(x @ W.T) with an optional RMSNorm prologue,
dual weights, bias, extra inputs and int8/fp8 weights (kernel_templates/matmul.py.j2), or the same problem
through the vendor BLAS (config IMPL=1, kernel_templates/_blas.py; quantised weights dequantised first) where
there is no RMSNorm prologue, or (IMPL=2, kernel_templates/matmul_tma.py.j2) persistent tiles fed by TMA
for plain 16/32-bit weights without a prologue, on Hopper and later. The prefill choice;
`gemv` takes the same problem for a few rows. The problem schema and reference live in _mm_common.py.
"""

from __future__ import annotations

from ds4c.device import GpuInfo
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates.base import Config, Problem, SearchSpace, Template, dtype_of
from ds4c.precision import QUANT_GROUP

SPACE = SearchSpace((
    ("BLOCK_M", (16, 32, 64, 128, 256)),
    ("BLOCK_N", (16, 32, 64, 128, 256)),
    ("BLOCK_K", (16, 32, 64, 128)),
    ("GROUP_M", (1, 4, 8)),
    ("num_warps", (4, 8)),
    ("num_stages", (1, 2, 3, 4, 5)),
    ("IMPL", (0, 1, 2)),  # 0: the Triton tiles above; 1: the vendor BLAS (kernel_templates/_blas.py);
    # 2: persistent Triton tiles over the same parameters, loaded by TMA (kernel_templates/matmul_tma.py.j2)
))
# IMPL=1 ignores the tile parameters: its one valid config carries these values for them (common ones, so
# that sub-grids of the space hold it too).
BLAS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 2, "IMPL": 1}
# Quantised weights through the BLAS first cost one pass writing them in the activation dtype (~3x their
# int8 bytes): at prefill sizes that is ~10% of the product, at a few rows it is most of it.
BLAS_QUANT_MIN_M = 256

_ACC_REGS = 128  # fp32 accumulator registers per thread we allow (128x256 tiles on 8 warps use 128)


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def smem_bytes(config: Config, p: Problem) -> int:
    """Shared memory of the pipelined operand buffers: num_stages copies of an x tile and the W tile(s)."""
    act = dtype_of(p["dtype"]).itemsize
    wb = act if p["w_dtype"] == "same" else 1
    n_w = 2 if p["dual"] else 1
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    return config["num_stages"] * bk * (bm * act + n_w * bn * wb)


def tma_ok(p: Problem, gpu: GpuInfo) -> bool:
    """IMPL=2 takes the problem: plain weights, no prologue, a GPU with TMA (or the interpreter), and rows of
    x, W and out (x and W of K elements, out of N) that are whole multiples of 16 bytes, as TMA needs."""
    item = dtype_of(p["dtype"]).itemsize
    return (p["w_dtype"] == "same" and p["rms_eps"] is None and (gpu.is_interpreter or gpu.capability >= (9, 0))
            and p["K"] * item % 16 == 0 and p["N"] * item % 16 == 0)


def tma_smem_bytes(config: Config, p: Problem) -> int:
    """Shared memory of IMPL=2: the operand stages (x loaded once, dual weights too) plus the output tile
    the TMA store reads, halved where the epilogue stores the tile in two halves (BLOCK_N >= 128); extra
    inputs take as much again (their tiles change layout through shared memory: Triton 3.6 asked 262176
    bytes for 128x256x64 at 4 stages with a residual on the H200, 32800 more than without)."""
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    store = bm * (bn // 2 if bn >= 128 else bn) * dtype_of(p["dtype"]).itemsize
    return smem_bytes(config, p) + store * (2 if p["n_extra"] else 1)


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    """Prune before compiling: shared memory, accumulator registers, tiles far beyond the problem."""
    if not SPACE.contains(config):
        return False
    p = problem
    if config["IMPL"] == 1:  # the BLAS: no prologue, one canonical config (int8/fp8 weights dequantised first)
        return config == BLAS and p["rms_eps"] is None
    # TMA tiles: wgmma takes 64 rows a warp group
    if config["IMPL"] == 2 and (not tma_ok(p, gpu) or config["BLOCK_M"] < 64):
        return False
    bm, bn, bk, warps = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config["num_warps"]
    n_acc = 2 if p["dual"] else 1
    if n_acc * bm * bn > _ACC_REGS * 32 * warps or bm * bn < 64 * warps:
        return False
    # no tile dimension beyond the next power of two of the problem (16 is the tl.dot minimum)
    cap = {d: max(16, _pow2_ceil(p[d])) for d in "MNK"}
    if bm > cap["M"] or bn > cap["N"] or bk > cap["K"]:
        return False
    if config["GROUP_M"] > 1 and p["M"] <= bm:  # one row of tiles: grouping changes nothing
        return False
    # quantised weights: each K tile takes the scale of one group
    if p["w_dtype"] != "same" and QUANT_GROUP % bk:
        return False
    # fp32 operands take twice the registers per K step; keep their K tiles short
    if p["dtype"] == "float32" and bk > 64:
        return False
    if config["IMPL"] == 2:
        return tma_smem_bytes(config, p) <= gpu.smem_per_block
    # The RMSNorm row sum is register math on a tile loaded inside the K loop: Triton 3.6's software
    # pipeliner schedules that load wrongly on Hopper (measured on the H200: errors of 1e-2 to 0.5 at 2+
    # stages whenever the loop runs more than once), so such problems run unpipelined.
    if p["rms_eps"] is not None and config["num_stages"] > 1 and p["K"] > bk and not gpu.is_interpreter:
        return False
    return smem_bytes(config, p) <= gpu.smem_per_block


def _shrink(config: Config, p: Problem, gpu: GpuInfo) -> Config:
    """Walk a preferred config down (stages, then K, N, M tiles, then grouping) until it is valid."""
    c = dict(config)
    steps = [("num_stages", 1), ("BLOCK_K", 16), ("BLOCK_N", 16), ("BLOCK_M", 16), ("GROUP_M", 1)]
    while not valid(c, p, gpu):
        for key, floor in steps:
            if c[key] > floor:
                c[key] = c[key] - 1 if key == "num_stages" else (1 if key == "GROUP_M" else c[key] // 2)
                break
        else:
            c["num_warps"] = 4
            if not valid(c, p, gpu):
                raise ValueError(f"no valid matmul config for {p}")
        if c["BLOCK_M"] * c["BLOCK_N"] < 64 * c["num_warps"]:
            c["num_warps"] = 4
    return c


def default(problem: Problem, gpu: GpuInfo) -> Config:
    """On a GPU the vendor BLAS where it applies (our pointer-load tiles reached ~0.8 of cuBLAS at M=2048 on
    the H200), for int8/fp8 weights only from BLAS_QUANT_MIN_M rows (below that the pass that dequantises the
    weights costs more than the product); otherwise (and in the interpreter) the tiles of tile_default."""
    quant_ok = problem["w_dtype"] == "same" or problem["M"] >= BLAS_QUANT_MIN_M
    if not gpu.is_interpreter and quant_ok and valid(BLAS, problem, gpu):
        return dict(BLAS)
    return tile_default(problem, gpu)


def tile_default(problem: Problem, gpu: GpuInfo) -> Config:
    """Hopper tiles: 128x256x64 on 8 warps with 3 stages for large M (the best pointer/TMA tile in our H200
    measurements), 128x128 for dual weights (two accumulators), skinny M tiles for small M."""
    p = problem
    M, N = p["M"], p["N"]
    bk = 32 if p["dtype"] == "float32" else 64
    if M >= 128:
        bm, bn, warps, stages = 128, (128 if p["dual"] else 256), 8, 3
    else:
        bm, bn, warps, stages = max(16, _pow2_ceil(M)), 128, 4, 4
        bk = 128 if p["dtype"] != "float32" else 64
    if p["w_dtype"] != "same":
        bk = min(bk, QUANT_GROUP)
    c = {"BLOCK_M": bm, "BLOCK_N": min(bn, max(16, _pow2_ceil(N))), "BLOCK_K": bk,
         "GROUP_M": 8 if M > bm else 1, "num_warps": warps, "num_stages": stages, "IMPL": 0}
    return _shrink(c, p, gpu)


def tma_default(problem: Problem, gpu: GpuInfo) -> Config | None:
    """The IMPL=2 tile the tuner measures first: 128x256x64 on 8 warps, 3 stages, grouped by 8; with dual
    weights 128x128 a weight (one 128x256 accumulator) at 4 stages. On the H200 at M=2048 these ran the
    Llama-3.1-8B layers at 0.96-1.07 of cuBLAS, and gate/up with its SwiGLU at 1.13 of cuBLAS's two products
    and silu*mul pass (bench/results/2026-12-03-matmul-tma-h200.json). None where IMPL=2 does not take the
    problem."""
    p = problem
    bk = 32 if p["dtype"] == "float32" else 64
    bn, stages = (128, 4) if p["dual"] else (256, 3)
    bm = min(128, max(64, _pow2_ceil(p["M"])))
    c = {"BLOCK_M": bm, "BLOCK_N": min(bn, max(64, _pow2_ceil(p["N"]))), "BLOCK_K": min(bk, _pow2_ceil(p["K"])),
         "GROUP_M": 8 if p["M"] > bm else 1, "num_warps": 8, "num_stages": stages, "IMPL": 2}
    while not valid(c, p, gpu) and c["num_stages"] > 1:
        c["num_stages"] -= 1
    return c if valid(c, p, gpu) else None


def alternatives(problem: Problem, gpu: GpuInfo) -> list[Config]:
    """One config per implementation beside the tiles, for the tuner to measure right after the default:
    the vendor BLAS and the TMA tiles of tma_default, where each takes the problem."""
    tma = tma_default(problem, gpu)
    return [c for c in (dict(BLAS), tma) if c is not None and valid(c, problem, gpu)]


TEMPLATE = Template(
    name="matmul",
    file="matmul.py.j2",
    space=SPACE,
    holes=C.holes,
    valid=valid,
    default=default,
    make_inputs=C.make_inputs,
    reference=C.reference,
    launch_kwargs=C.launch_kwargs,
    cost=C.cost,
    alternatives=alternatives,
    token_dims=("M",),
)

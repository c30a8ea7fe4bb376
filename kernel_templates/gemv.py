"""gemv template: the matmul problem (_mm_common.py) for M in 1..16 rows, on CUDA cores with an fp32 product
tile reduced once after the K loop (kernel_templates/gemv.py.j2). The decode choice: each program reads its
weight tile from HBM once for all rows. `matmul` takes the same problem with tensor-core tiles.
"""

from __future__ import annotations

from ds4c.device import GpuInfo
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates.base import Config, Problem, SearchSpace, Template, dtype_of
from ds4c.precision import QUANT_GROUP

MAX_ROWS = 16

SPACE = SearchSpace((
    ("BLOCK_N", (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)),  # > 64: the interpreter only (registers)
    ("BLOCK_K", (64, 128, 256, 512, 1024, 2048)),
    ("num_warps", (1, 2, 4, 8)),
    ("num_stages", (1, 2, 3, 4)),
    ("TMA", (0, 1)),  # 1: quantised weight tiles through tensor descriptors (Hopper+), in shared memory
), implied=(("TMA", 0),))  # configs stored before TMA existed loaded by pointers

_ACC_REGS = 64  # fp32 accumulator registers per thread we allow
_STEP_REGS = 128  # quantised weights: fp32 registers per thread for one step's converted weight tile


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def holes(problem: Problem) -> dict:
    """The shared matmul holes plus `single`: one row gets a 2-D product tile, several rows a 3-D one."""
    if problem["M"] > MAX_ROWS:
        raise ValueError(f"gemv handles at most {MAX_ROWS} rows, got M={problem['M']}")
    return {**C.holes(problem), "single": problem["M"] == 1}


def valid(config: Config, problem: Problem, gpu: GpuInfo) -> bool:
    """Prune before compiling: rows, accumulator registers, shared memory, tiles far beyond the problem."""
    if not SPACE.contains(config) or problem["M"] > MAX_ROWS:
        return False
    p = problem
    bn, bk, warps = config["BLOCK_N"], config["BLOCK_K"], config["num_warps"]
    threads = 32 * warps
    n_acc = 2 if p["dual"] else 1
    if _pow2_ceil(p["M"]) * bn * bk > 1 << 20:
        return False  # Triton's largest tensor
    quant = p["w_dtype"] != "same"
    if not gpu.is_interpreter:  # the interpreter has no registers: there, fewer and larger programs are faster
        if not quant and _pow2_ceil(p["M"]) * bn * bk * n_acc > _ACC_REGS * threads:
            return False  # the fp32 product tile lives across the K loop
        if quant and _pow2_ceil(p["M"]) * bn * bk * n_acc > _STEP_REGS * threads:
            return False  # the accumulator is one value per scale group; a step's converted tile is transient
    # up to 8 weight elements (one 16-byte bf16 load) per thread and step; fewer when many rows share them
    if bn * bk < threads * max(1, 8 // _pow2_ceil(p["M"])):
        return False
    if bn > max(4, _pow2_ceil(p["N"])) or bk > max(64, _pow2_ceil(p["K"])):
        return False
    if quant and bk % QUANT_GROUP:  # quantised: whole scale groups per K tile
        return False
    if config["TMA"] and not tma_ok(p, gpu):
        return False
    wb = dtype_of(p["dtype"]).itemsize if p["w_dtype"] == "same" else 1
    return config["num_stages"] * bn * bk * wb * n_acc <= gpu.smem_per_block


def tma_ok(p: Problem, gpu: GpuInfo) -> bool:
    """TMA=1 takes the problem: one row of x, quantised weights of whole scale groups per row (the descriptor
    views W as [N, K / G, G]), on a GPU with TMA or the interpreter. Several rows through TMA tiles computed
    wrong results on the H200 (Triton 3.6) where the interpreter's were right, so they keep the pointer loads."""
    return (p["M"] == 1 and p["w_dtype"] != "same" and p["K"] % QUANT_GROUP == 0
            and (gpu.is_interpreter or gpu.capability >= (9, 0)))


def default(problem: Problem, gpu: GpuInfo) -> Config:
    """Hopper GEMV tiles from our H200 measurements, the first valid tile in order of preference, K tiles
    shrinking first when several rows or dual weights would push the product tile out of registers.
    bf16 weights: BLOCK_N 8-16, BLOCK_K 256-512, 4 warps, 2 stages. int8/fp8 weights (a byte per weight, an
    accumulator per scale group): BLOCK_N 4, BLOCK_K 1024, 3 stages; tuned Llama-3.1-8B gate/up and down
    projections took these tiles (34.9 and 21.7 us, bench/results/2026-12-03-tuning-db-h200-run9.json).
    Where TMA takes the problem, one quantised weight (not dual) takes BLOCK_N 4, BLOCK_K 1024, one warp,
    3 stages through TMA: the best of 20 random TMA tiles on the down projection (18.6 us against the pointer
    tiles' 20.9, bench/results/2026-12-04-gemv-tma-probe-h200.json), and TMA tiles won the tuning of the
    down projection and output head in a model (18.55 and 140.9 us). One row of dual quantised weights
    takes BLOCK_N 8, BLOCK_K 256, one warp, one stage by pointers: with the RMSNorm prologue, as a decoder's
    gate/up runs, the best of 36 random pointer tiles (35.6 us, 205 pJ/B) and of 36 TMA tiles (35.4 us,
    213 pJ/B) were even (bench/results/2026-12-04-gemv-rms-probe-h200.json)."""
    if not gpu.is_interpreter and problem["w_dtype"] != "same" and problem["M"] == 1:
        first = ({"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 1, "num_stages": 1, "TMA": 0} if problem["dual"]
                 else {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 1, "num_stages": 3, "TMA": 1})
        if valid(first, problem, gpu):
            return first
    if problem["w_dtype"] != "same":
        bks, bns, warps_order, stages = (1024, 512, 256, 128, 64), (4, 8, 2, 16, 32), (4, 8, 2, 1), 3
    else:
        bks, bns, warps_order, stages = (512, 256, 128, 64, 1024), (8, 16, 4, 32, 64), (4, 2, 8, 1), 2
    for bk in bks:
        for bn in bns:
            for warps in warps_order:
                c = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages, "TMA": 0}
                if valid(c, problem, gpu):
                    return c
    raise ValueError(f"no valid gemv config for {problem}")


TEMPLATE = Template(
    name="gemv",
    file="gemv.py.j2",
    space=SPACE,
    holes=holes,
    valid=valid,
    default=default,
    make_inputs=C.make_inputs,
    reference=C.reference,
    launch_kwargs=C.launch_kwargs,
    cost=C.cost,
    token_dims=("M",),
)

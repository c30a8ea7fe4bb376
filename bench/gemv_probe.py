"""Probe (a GPU script): other shapes of the decode GEMV against the gemv template, for time and energy.

The gemv template multiplies each weight by x on the fp32 pipe from a [BLOCK_N, BLOCK_K] tile; int8 weights
first go through a float-bits conversion and are summed per scale group each step. Variants (--variants):
  - template / template-tma: the gemv template, its default and --sweep random valid configs of each TMA value
    in --template-tma (--rms: with the RMSNorm prologue, as a decoder's gate/up runs);
  - mma0/mma1/mma2: rows of x padded to 16 and each weight tile into `tl.dot` (tensor cores): bf16 weights
    straight in (mma0); int8 weights as exact fp16 (4 bytes in 3 integer/fp16x2 instructions) with one dot per
    scale group scaled in fp32 after it (mma1), or prescaled in fp16 with one dot per K tile (mma2);
  - flat0/flat1: int8, a full fp32 product tile with the group scale folded into x, summed once after the
    loop (no reduction in the loop); flat1 also loads the next int8 tile ahead;
  - pf1/pf2: int8, the template's per-group sums with the int8 tiles of the next 1 or 2 steps loaded ahead;
  - tma: int8 or bf16, weight tiles [BLOCK_N, BLOCK_K / 64, 64] loaded by TMA (a descriptor over W viewed
    as [N, K / 64, 64]) in a loop of num_stages tiles in flight in shared memory, not in registers;
  - sk2/sk3/sk4/sk8: int8, the template's per-group sums split over K between 2-8 programs per column block,
    the last to finish adding the partial sums in order (more programs without more reads of x).
Each variant is checked against float64 on the dequantised weights, timed (CUDA graph), and its best config's
energy per launch read from NVML over about a second of CUDA graph replays (pj_per_byte: energy over the
bytes the template's cost model counts).

    python bench/gemv_probe.py --out probe.json [--sweep 24] [--shapes gate_up,down] [--w-dtypes int8,same]
        [--variants template,mma0,...] [--rms] [--template-tma 0,1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time

import torch
import triton
import triton.language as tl

from ds4c.benchmark.measure import EnergyMeter
from ds4c.benchmark.record import git_commit
from ds4c.device import current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.precision import QUANT_GROUP, dequantize, rel_error
from ds4c.runtime.loader import load_source

G = QUANT_GROUP


@triton.jit
def _i8_to_f16(w):
    """4 int8 -> 4 exact fp16: byte + 128 into the low byte of fp16 1024 (0x64xx), then minus 1152."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t, a, b, c;
        xor.b32 t, $2, 0x80808080;
        mov.b32 c, 0x64806480;
        prmt.b32 a, t, 0x64646464, 0x4140;
        prmt.b32 b, t, 0x64646464, 0x4342;
        sub.f16x2 $0, a, c;
        sub.f16x2 $1, b, c;
        }""",
        constraints="=r,=r,r", args=[w], dtype=tl.float16, is_pure=True, pack=4)


# the gemv template's int8 -> fp32 conversion itself, from its rendered source, so the variants convert as it does
_int8_to_f32 = load_source(get("gemv").source(C.problem(1, 64, 64, w_dtype="int8")))._int8_to_f32


@triton.jit
def _convert(w, F16: tl.constexpr, ASM: tl.constexpr):
    """int8 -> exact fp16 (F16) or fp32: the byte tricks on a GPU (ASM), a plain cast under the interpreter."""
    if F16:
        if ASM:
            return _i8_to_f16(w)
        return w.to(tl.float16)
    if ASM:
        return _int8_to_f32(w)
    return w.to(tl.float32)


@triton.jit
def _mma_gemv(out_ptr, x_ptr, w_ptr, ws_ptr, w2_ptr, w2s_ptr, M, N, K,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, MODE: tl.constexpr,
              DUAL: tl.constexpr, ASM: tl.constexpr = True):
    """MODE 0: bf16 weights; 1: int8, a dot per group scaled after; 2: int8, fp16 weights prescaled."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = offs_n % N
    rows = tl.arange(0, 16)
    rm = rows % M
    n_groups = tl.cdiv(K, GROUP)
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if MODE == 1:
            for g in tl.static_range(BLOCK_K // GROUP):
                kk = k0 + g * GROUP + tl.arange(0, GROUP)
                x = tl.load(x_ptr + rm[:, None] * K + kk[None, :]).to(tl.float16)
                w = _convert(tl.load(w_ptr + rn[:, None] * K + kk[None, :]), True, ASM)
                s = tl.load(ws_ptr + rn * n_groups + k0 // GROUP + g)
                acc += tl.dot(x, tl.trans(w)) * s[None, :]
                if DUAL:
                    w2 = _convert(tl.load(w2_ptr + rn[:, None] * K + kk[None, :]), True, ASM)
                    s2 = tl.load(w2s_ptr + rn * n_groups + k0 // GROUP + g)
                    acc2 += tl.dot(x, tl.trans(w2)) * s2[None, :]
        else:
            kk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rm[:, None] * K + kk[None, :])
            w = tl.load(w_ptr + rn[:, None] * K + kk[None, :])
            if DUAL:
                w2 = tl.load(w2_ptr + rn[:, None] * K + kk[None, :])
            if MODE == 2:
                x = x.to(tl.float16)
                gs = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
                s = tl.load(ws_ptr + rn[:, None] * n_groups + gs[None, :]).to(tl.float16)
                w = tl.reshape(tl.reshape(_convert(w, True, ASM), (BLOCK_N, BLOCK_K // GROUP, GROUP)) * s[:, :, None],
                               (BLOCK_N, BLOCK_K))
                if DUAL:
                    s2 = tl.load(w2s_ptr + rn[:, None] * n_groups + gs[None, :]).to(tl.float16)
                    w2 = tl.reshape(tl.reshape(_convert(w2, True, ASM), (BLOCK_N, BLOCK_K // GROUP, GROUP))
                                    * s2[:, :, None], (BLOCK_N, BLOCK_K))
            acc = tl.dot(x, tl.trans(w), acc)
            if DUAL:
                acc2 = tl.dot(x, tl.trans(w2), acc2)
    if DUAL:
        acc = acc / (1.0 + tl.exp(-acc)) * acc2
    mask = (rows[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + rows[:, None] * N + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _i8_flat(out_ptr, x_ptr, w_ptr, ws_ptr, w2_ptr, w2s_ptr, N, K,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, DUAL: tl.constexpr,
             PREFETCH: tl.constexpr, ASM: tl.constexpr = True):
    """One row, int8 weights: a full fp32 product tile [BLOCK_N, BLOCK_K] with the group scale folded into x
    per element (x * s), summed once after the loop: no reduction inside the loop."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = offs_n % N
    n_groups = tl.cdiv(K, GROUP)
    offs_g = tl.arange(0, BLOCK_K // GROUP)
    kk0 = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP, GROUP), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K // GROUP, GROUP), dtype=tl.float32)
    w_base = w_ptr + rn[:, None, None] * K + kk0[None, :, :]
    w2_base = w2_ptr + rn[:, None, None] * K + kk0[None, :, :]
    if PREFETCH:
        wq = tl.load(w_base)
        if DUAL:
            w2q = tl.load(w2_base)
    for k0 in range(0, K, BLOCK_K):
        if PREFETCH:
            w = _convert(wq, False, ASM)
            if DUAL:
                w2 = _convert(w2q, False, ASM)
            nxt = (k0 + BLOCK_K) % K
            wq = tl.load(w_base + nxt)
            if DUAL:
                w2q = tl.load(w2_base + nxt)
        else:
            w = _convert(tl.load(w_base + k0), False, ASM)
            if DUAL:
                w2 = _convert(tl.load(w2_base + k0), False, ASM)
        x = tl.load(x_ptr + k0 + kk0).to(tl.float32)
        s = tl.load(ws_ptr + rn[:, None] * n_groups + (k0 // GROUP + offs_g)[None, :])
        acc += w * (x[None, :, :] * s[:, :, None])
        if DUAL:
            s2 = tl.load(w2s_ptr + rn[:, None] * n_groups + (k0 // GROUP + offs_g)[None, :])
            acc2 += w2 * (x[None, :, :] * s2[:, :, None])
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    if DUAL:
        y2 = tl.sum(tl.sum(acc2, axis=2), axis=1)
        y = y / (1.0 + tl.exp(-y)) * y2
    tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _i8_pf(out_ptr, x_ptr, w_ptr, ws_ptr, w2_ptr, w2s_ptr, N, K,
           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, DUAL: tl.constexpr,
           DEPTH: tl.constexpr, ASM: tl.constexpr = True):
    """One row, int8 weights, the gemv template's per-group sums, with the int8 weight tiles of the next DEPTH
    steps loaded ahead (a byte of registers per weight in flight). K % BLOCK_K == 0."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = offs_n % N
    n_groups = tl.cdiv(K, GROUP)
    offs_g = tl.arange(0, BLOCK_K // GROUP)
    kk0 = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
    w_base = w_ptr + rn[:, None, None] * K + kk0[None, :, :]
    w2_base = w2_ptr + rn[:, None, None] * K + kk0[None, :, :]
    last = K - BLOCK_K
    wa = tl.load(w_base)
    wb = tl.load(w_base + tl.minimum(BLOCK_K, last))
    if DUAL:
        w2a = tl.load(w2_base)
        w2b = tl.load(w2_base + tl.minimum(BLOCK_K, last))
    for k0 in range(0, K, BLOCK_K):
        nk = tl.minimum(k0 + DEPTH * BLOCK_K, last)
        wn = tl.load(w_base + nk)
        if DUAL:
            w2n = tl.load(w2_base + nk)
        s_offs = rn[:, None] * n_groups + (k0 // GROUP + offs_g)[None, :]
        x = tl.load(x_ptr + k0 + kk0).to(tl.float32)
        acc += tl.sum(_convert(wa, False, ASM) * x[None, :, :], axis=2) * tl.load(ws_ptr + s_offs)
        if DUAL:
            acc2 += tl.sum(_convert(w2a, False, ASM) * x[None, :, :], axis=2) * tl.load(w2s_ptr + s_offs)
        if DEPTH == 1:
            wa = wn
            if DUAL:
                w2a = w2n
        else:
            wa = wb
            wb = wn
            if DUAL:
                w2a = w2b
                w2b = w2n
    y = tl.sum(acc, axis=1)
    if DUAL:
        y2 = tl.sum(acc2, axis=1)
        y = y / (1.0 + tl.exp(-y)) * y2
    tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _i8_splitk(out_ptr, x_ptr, w_ptr, ws_ptr, w2_ptr, w2s_ptr, part_ptr, count_ptr, N, K,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, DUAL: tl.constexpr,
               SPLIT: tl.constexpr, ASM: tl.constexpr = True):
    """One row, int8 weights, split-K: program (n, s) sums K slice s of BLOCK_N columns (the template's per-group
    sums) and stores it to part[s]; the last of the SPLIT programs of a column block to arrive (an acq_rel
    counter) adds the SPLIT partial sums in order (deterministic), applies the epilogue, writes the output, and
    resets the counter for the next launch. More programs per column block without more reads of x."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = offs_n % N
    n_groups = tl.cdiv(K, GROUP)
    offs_g = tl.arange(0, BLOCK_K // GROUP)
    kk0 = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    per = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT) * BLOCK_K
    k_lo = pid_s * per
    k_hi = tl.minimum(k_lo + per, K)
    acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        s_offs = rn[:, None] * n_groups + (k0 // GROUP + offs_g)[None, :]
        x = tl.load(x_ptr + k0 + kk0).to(tl.float32)
        w = _convert(tl.load(w_ptr + rn[:, None, None] * K + k0 + kk0[None, :, :]), False, ASM)
        acc += tl.sum(w * x[None, :, :], axis=2) * tl.load(ws_ptr + s_offs)
        if DUAL:
            w2 = _convert(tl.load(w2_ptr + rn[:, None, None] * K + k0 + kk0[None, :, :]), False, ASM)
            acc2 += tl.sum(w2 * x[None, :, :], axis=2) * tl.load(w2s_ptr + s_offs)
    mask = offs_n < N
    NP: tl.constexpr = 2 if DUAL else 1
    tl.store(part_ptr + (pid_s * NP) * N + offs_n, tl.sum(acc, axis=1), mask=mask)
    if DUAL:
        tl.store(part_ptr + (pid_s * NP + 1) * N + offs_n, tl.sum(acc2, axis=1), mask=mask)
    arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
    if arrived == SPLIT - 1:
        y = tl.zeros((BLOCK_N,), dtype=tl.float32)
        y2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for i in tl.static_range(SPLIT):
            y += tl.load(part_ptr + (i * NP) * N + offs_n, mask=mask, other=0.0, cache_modifier=".cg")
            if DUAL:
                y2 += tl.load(part_ptr + (i * NP + 1) * N + offs_n, mask=mask, other=0.0, cache_modifier=".cg")
        if DUAL:
            y = y / (1.0 + tl.exp(-y)) * y2
        tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed")


@triton.jit
def _gemv_tma(out_ptr, x_ptr, w_desc, ws_ptr, w2_desc, w2s_ptr, N, K,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, DUAL: tl.constexpr,
              QUANT: tl.constexpr, STAGES: tl.constexpr, ASM: tl.constexpr = True):
    """One row; weight tiles [BLOCK_N, BLOCK_K // GROUP, GROUP] arrive by TMA (a descriptor over W viewed as
    [N, K // GROUP, GROUP]), STAGES tiles in flight in shared memory, so the bytes in flight no longer cost
    registers. int8 (QUANT): the template's per-group sums and scales; bf16: an fp32 product tile."""
    pid = tl.program_id(0)
    n0 = pid * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    rn = offs_n % N
    n_groups = tl.cdiv(K, GROUP)
    offs_g = tl.arange(0, BLOCK_K // GROUP)
    kk0 = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    if QUANT:
        acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP, GROUP), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_N, BLOCK_K // GROUP, GROUP), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        g0 = k0 // GROUP
        w = w_desc.load([n0, g0, 0])
        if DUAL:
            w2 = w2_desc.load([n0, g0, 0])
        x = tl.load(x_ptr + k0 + kk0, mask=k0 + kk0 < K, other=0.0).to(tl.float32)
        if QUANT:
            s_offs = rn[:, None] * n_groups + (g0 + offs_g)[None, :]
            s_live = (g0 + offs_g)[None, :] < n_groups
            acc += tl.sum(_convert(w, False, ASM) * x[None, :, :], axis=2) * tl.load(ws_ptr + s_offs, mask=s_live,
                                                                                     other=0.0)
            if DUAL:
                acc2 += tl.sum(_convert(w2, False, ASM) * x[None, :, :], axis=2) * tl.load(w2s_ptr + s_offs,
                                                                                           mask=s_live, other=0.0)
        else:
            acc += w.to(tl.float32) * x[None, :, :]
            if DUAL:
                acc2 += w2.to(tl.float32) * x[None, :, :]
    if QUANT:
        y = tl.sum(acc, axis=1)
        y2 = tl.sum(acc2, axis=1)
    else:
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        y2 = tl.sum(tl.sum(acc2, axis=2), axis=1)
    if DUAL:
        y = y / (1.0 + tl.exp(-y)) * y2
    tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=offs_n < N)


SHAPES = {"gate_up": (14336, 4096, True), "down": (4096, 14336, False), "o": (4096, 4096, False),
          "qkv": (6144, 4096, False)}
MMA_SPACE = {"BLOCK_N": (16, 32, 64, 128), "BLOCK_K": (64, 128, 256, 512), "num_warps": (2, 4, 8),
             "num_stages": (1, 2, 3, 4)}


def _launcher(kernel, grid: tuple, args: tuple, c: dict, **consts):
    """A no-argument launch of one of the probe's kernels with config c (tile, warps, stages) and consts."""

    def launch():
        kernel[grid](*args, BLOCK_N=c["BLOCK_N"], BLOCK_K=c["BLOCK_K"], GROUP=G, num_warps=c["num_warps"],
                     num_stages=c["num_stages"], **consts)

    return launch


def _time_us(fn) -> float:
    return 1000.0 * triton.testing.do_bench_cudagraph(fn, rep=100)


def _energy(fn, meter, seconds: float = 1.0) -> dict:
    """Replay a CUDA graph of 50 launches for ~seconds: mJ per launch, watts, us per launch."""
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(50):
            fn()
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    g.replay()
    torch.cuda.synchronize()
    reps = max(1, int(seconds / max(time.perf_counter() - t0, 1e-4)))
    e0, t0 = meter.read_mj(), time.perf_counter()
    for _ in range(reps):
        g.replay()
    torch.cuda.synchronize()
    e1, t1 = meter.read_mj(), time.perf_counter()
    n = 50 * reps
    return {"mj_per_launch": (e1 - e0) / n, "watts": (e1 - e0) / 1e3 / (t1 - t0), "us_loop": (t1 - t0) / n * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--sweep", type=int, default=24)
    ap.add_argument("--shapes", default="gate_up,down,o")
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--variants", default="template,mma0,mma1,mma2,flat0,flat1")
    ap.add_argument("--w-dtypes", default="int8,same")
    ap.add_argument("--rms", action="store_true",
                    help="with the RMSNorm prologue, as a decoder's gate/up and qkv run (template variants only)")
    ap.add_argument("--template-tma", default="0,1",
                    help="TMA values the template's sweep draws from, --sweep configs each (e.g. 1)")
    args = ap.parse_args()
    if args.rms and set(args.variants.split(",")) - {"template"}:
        ap.error("--rms: only the template has the RMSNorm prologue")
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    meter, why = EnergyMeter.open(dev)
    gpu = current_gpu()
    rows = []
    for name in args.shapes.split(","):
        N, K, dual = SHAPES[name]
        for w_dtype in args.w_dtypes.split(","):
            p = C.problem(args.rows, N, K, "bfloat16", w_dtype=w_dtype, dual=dual,
                          rms_eps=1e-5 if args.rms else None, epilogue=C.SWIGLU if dual else "acc")
            tmpl = get("gemv")
            outs, ins = tmpl.make_inputs(p, dev, gen)
            a = dict(zip(C.arg_names(p), ins, strict=True))
            x = a["x"]

            def weight(nm, a=a, w_dtype=w_dtype):
                w = a[nm]
                return (w.double() if w_dtype == "same" else dequantize(w, a[nm + "_scale"]).double())

            ref = x.double() @ weight("w").T
            if dual:
                r2 = x.double() @ weight("w2").T
                ref = torch.nn.functional.silu(ref) * r2
            if args.rms:  # the template's own fp32 reference, norm included
                ref = tmpl.reference(p, ins)[0].to(dev)
            nbytes = tmpl.cost(p)[1]
            candidates = []  # (variant, config, fn)
            mod = load_source(tmpl.source(p))
            kw = tmpl.launch_kwargs(p)
            picks = [tmpl.default(p, gpu)]
            for tma in (int(v) for v in args.template_tma.split(",")):
                space = [c for c in tmpl.space.grid() if tmpl.valid(c, p, gpu) and c["TMA"] == tma]
                picks += [c for c in random.Random(0).sample(space, min(args.sweep, len(space))) if c not in picks]
            for c in picks:
                def run_template(c=c, mod=mod, outs=outs, ins=ins, kw=kw):
                    mod.launch(*outs, *ins, **kw, **c)
                candidates.append(("template-tma" if c["TMA"] else "template", c, run_template))
            out = outs[0]
            w2 = a.get("w2", a["w"])
            s1 = a.get("w_scale", a["w"])
            s2 = a.get("w2_scale", s1)
            modes = [m for m in (1, 2) if f"mma{m}" in args.variants] if w_dtype == "int8" else \
                [0] if "mma0" in args.variants else []
            grid_cfgs = [dict(zip(MMA_SPACE, v, strict=True)) for v in itertools.product(*MMA_SPACE.values())]
            grid_cfgs = [c for c in grid_cfgs if c["BLOCK_K"] <= K and c["BLOCK_N"] * c["BLOCK_K"] <= 64 * 1024]
            for mode in modes:
                for c in [{"BLOCK_N": 64, "BLOCK_K": 256, "num_warps": 4, "num_stages": 3}] + \
                        random.Random(1).sample(grid_cfgs, min(args.sweep, len(grid_cfgs))):
                    fn = _launcher(_mma_gemv, (triton.cdiv(N, c["BLOCK_N"]),),
                                   (out, x, a["w"], s1, w2, s2, args.rows, N, K), c, MODE=mode, DUAL=dual)
                    candidates.append((f"mma{mode}", c, fn))
            flat_cfgs = [c for c in grid_cfgs if c["BLOCK_N"] * c["BLOCK_K"] <= 64 * 32 * c["num_warps"]
                         and c["BLOCK_N"] <= 16] + \
                [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=1) for bn in (2, 4, 8) for bk in (256, 512, 1024)
                 for nw in (1, 2, 4, 8) if bn * bk <= 64 * 32 * nw and bn * bk >= 16 * 32 * nw]
            for pre in (0, 1):
                if w_dtype != "int8" or f"flat{pre}" not in args.variants:
                    continue
                for c in random.Random(2).sample(flat_cfgs, min(args.sweep, len(flat_cfgs))):
                    fn = _launcher(_i8_flat, (triton.cdiv(N, c["BLOCK_N"]),), (out, x, a["w"], s1, w2, s2, N, K), c,
                                   DUAL=dual, PREFETCH=pre)
                    candidates.append((f"flat{pre}", c, fn))
            pf_cfgs = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=1) for bn in (2, 4, 8, 16)
                       for bk in (256, 512, 1024, 2048) for nw in (1, 2, 4, 8)
                       if K % bk == 0 and 16 * 32 * nw <= bn * bk <= 128 * 32 * nw]
            for depth in (1, 2):
                if w_dtype != "int8" or f"pf{depth}" not in args.variants:
                    continue
                for c in random.Random(3).sample(pf_cfgs, min(args.sweep, len(pf_cfgs))):
                    fn = _launcher(_i8_pf, (triton.cdiv(N, c["BLOCK_N"]),), (out, x, a["w"], s1, w2, s2, N, K), c,
                                   DUAL=dual, DEPTH=depth)
                    candidates.append((f"pf{depth}", c, fn))
            for split in (2, 3, 4, 8):
                if w_dtype != "int8" or f"sk{split}" not in args.variants:
                    continue
                sk_cfgs = [dict(c, num_stages=st) for c in pf_cfgs for st in (1, 2, 3) if K // c["BLOCK_K"] >= split]
                for c in random.Random(4).sample(sk_cfgs, min(args.sweep, len(sk_cfgs))):
                    part = torch.empty(split * (2 if dual else 1) * N, dtype=torch.float32, device=dev)
                    count = torch.zeros(triton.cdiv(N, c["BLOCK_N"]), dtype=torch.int32, device=dev)

                    fn = _launcher(_i8_splitk, (triton.cdiv(N, c["BLOCK_N"]), split),
                                   (out, x, a["w"], s1, w2, s2, part, count, N, K), c, DUAL=dual, SPLIT=split)
                    candidates.append((f"sk{split}", c, fn))
            if "tma" in args.variants:
                from triton.tools.tensor_descriptor import TensorDescriptor

                quant = w_dtype == "int8"
                tma_cfgs = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=st) for bn in (2, 4, 8, 16, 32)
                            for bk in (128, 256, 512, 1024, 2048) for nw in (1, 2, 4, 8) for st in (2, 3, 4, 6)
                            if 8 * 32 * nw <= bn * bk <= (128 if quant else 64) * 32 * nw
                            and st * bn * bk * (1 if quant else 2) * (2 if dual else 1) <= 200 * 1024]
                cfgs = random.Random(5).sample(tma_cfgs, min(args.sweep, len(tma_cfgs)))
                for c in cfgs:
                    box = [c["BLOCK_N"], c["BLOCK_K"] // G, G]
                    wd = TensorDescriptor(a["w"], [N, K // G, G], [K, G, 1], box)
                    w2d = TensorDescriptor(w2, [N, K // G, G], [K, G, 1], box) if dual else wd
                    fn = _launcher(_gemv_tma, (triton.cdiv(N, c["BLOCK_N"]),), (out, x, wd, s1, w2d, s2, N, K), c,
                                   DUAL=dual, QUANT=quant, STAGES=c["num_stages"])
                    candidates.append(("tma", c, fn))
            if "template" not in args.variants:
                candidates = [cand for cand in candidates if not cand[0].startswith("template")]
            best: dict[str, tuple] = {}
            for variant, c, fn in candidates:
                out.fill_(float("nan"))
                try:
                    fn()
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 - a config that fails to compile is a data point
                    rows.append({"shape": name, "w_dtype": w_dtype, "variant": variant, "config": c,
                                 "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    continue
                err = rel_error(out, ref)
                if not err < 2e-2:
                    rows.append({"shape": name, "w_dtype": w_dtype, "variant": variant, "config": c, "rel_err": err,
                                 "error": "wrong result"})
                    continue
                us = _time_us(fn)
                if variant not in best or us < best[variant][0]:
                    best[variant] = (us, c, fn, err)
            for variant, (us, c, fn, err) in best.items():
                row = {"shape": name, "N": N, "K": K, "dual": dual, "rms": args.rms, "M": args.rows, "w_dtype": w_dtype,
                       "variant": variant, "config": c, "rel_err": err, "us": us, "gbps": nbytes / us / 1e3}
                if meter is not None:
                    e = _energy(fn, meter)
                    row.update(e, pj_per_byte=e["mj_per_launch"] * 1e9 / nbytes)
                rows.append(row)
                print(json.dumps(row), flush=True)
    rec = {"kind": "gemv-probe", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "commit": git_commit(), "energy": why or "nvml", "rows": rows,
           "command": "python bench/gemv_probe.py " + " ".join(sys.argv[1:])}
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()

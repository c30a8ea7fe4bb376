"""Kernel tests for the matmul template (kernel_templates/matmul.py.j2): odd shapes, every dtype and hole,
random valid configs, the search space and default, against the fp32 reference of _mm_common."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from ds4c.device import H200, current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.kernel_templates import matmul as matmul_template
from ds4c.precision import assert_close, rel_error
from ds4c.runtime.loader import load_source

T = get("matmul")
BLAS = matmul_template.BLAS


def run(p, device, config=None, x_row_stride=None, extra_row_stride=None, seed=None):
    """Launch p on fresh random inputs (outputs poisoned with NaN) and compare to the reference."""
    seed = random.randrange(2**31) if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    outs, ins = T.make_inputs(p, device, gen)
    names = C.arg_names(p)
    if x_row_stride is not None:  # x as a view with a padded row stride
        buf = torch.randn(p["M"], x_row_stride, generator=gen).to(ins[0].dtype).to(device)
        ins[0] = buf[:, : p["K"]]
    if extra_row_stride is not None:
        for i, name in enumerate(names):
            if name.startswith("e"):
                buf = torch.randn(p["M"], extra_row_stride, generator=gen).to(ins[i].dtype).to(device)
                ins[i] = buf[:, 3 : 3 + p["N"]]
    outs[0].fill_(float("nan"))
    config = config or T.default(p, current_gpu())
    assert T.valid(config, p, current_gpu()), config
    mod = load_source(T.source(p))
    mod.launch(*outs, *ins, **T.launch_kwargs(p), **config)
    ref = T.reference(p, ins)[0]
    assert_close(outs[0], ref, what=f"{p} {config} seed={seed}")
    return outs[0], ref


SHAPES = [(1, 7, 100), (17, 129, 257), (64, 100, 129), (130, 257, 7), (17, 7, 16), (1, 257, 129)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_plain(M, N, K, dtype, device):
    run(C.problem(M, N, K, dtype), device)


HOLES = {
    "rms": dict(rms_eps=1e-5),
    "dual_swiglu": dict(dual=True, epilogue=C.SWIGLU),
    "bias_gelu_tanh": dict(bias=True, epilogue=("gelu_tanh", ("add", "acc", "bias"))),
    "residual": dict(n_extra=1, epilogue=("add", "acc", "e0")),
    "two_extras": dict(n_extra=2, epilogue=("add", ("mul", "acc", "e1"), "e0")),
    "int8": dict(w_dtype="int8"),
    "fp8": dict(w_dtype="float8_e4m3fn"),
    "int8_rms_dual": dict(w_dtype="int8", rms_eps=1e-6, dual=True, epilogue=C.SWIGLU),
    "fp8_everything": dict(w_dtype="float8_e4m3fn", rms_eps=1e-5, dual=True, bias=True, n_extra=1,
                           epilogue=("add", ("mul", ("silu", ("add", "acc", "bias")), "acc2"), "e0")),
    "constant": dict(epilogue=("add", ("mul", "acc", 0.0), 1.5)),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("hole", sorted(HOLES))
def test_holes(hole, dtype, device):
    run(C.problem(33, 65, 100, dtype, **HOLES[hole]), device)


@pytest.mark.parametrize("hole", ["rms", "dual_swiglu", "int8", "fp8_everything"])
def test_holes_fp32_skinny(hole, device):
    run(C.problem(1, 129, 257, "float32", **HOLES[hole]), device)


def test_strided_x_and_extras(device):
    p = C.problem(19, 70, 96, "bfloat16", rms_eps=1e-5, n_extra=1, epilogue=("add", "acc", "e0"))
    run(p, device, x_row_stride=101, extra_row_stride=77)


def test_rms_prologue_is_the_norm(device):
    """The prologue matches RMSNorm (with its weight) followed by the matmul, not just the reference."""
    p = C.problem(5, 40, 300, "float32", rms_eps=1e-5)
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    outs, (x, g, w) = T.make_inputs(p, device, gen)
    load_source(T.source(p)).launch(*outs, x, g, w, **T.launch_kwargs(p), **T.default(p, current_gpu()))
    xn = torch.nn.functional.rms_norm(x.cpu().double(), (300,), g.cpu().double(), eps=1e-5)
    assert_close(outs[0], xn @ w.cpu().double().T)


@pytest.mark.parametrize("hole", ["dual_swiglu", "residual", "int8_rms_dual"])
def test_random_valid_configs(hole, device):
    """Every config the tuner may draw (valid ones from the grid) computes the right result."""
    p = C.problem(40, 72, 80, "float16", **HOLES[hole])
    gpu = current_gpu()
    configs = [c for c in T.space.grid() if T.valid(c, p, gpu)]
    assert len(configs) >= 20
    for c in random.sample(configs, 5):
        run(p, device, config=c)


def test_poison_is_caught(device):
    """A kernel that writes nothing leaves NaN, which the comparison rejects."""
    p = C.problem(3, 5, 7, "float16")
    outs, ins = T.make_inputs(p, device, torch.Generator().manual_seed(0))
    assert rel_error(outs[0], T.reference(p, ins)[0]) == float("inf")


LLAMA = [(6144, 4096, False), (4096, 4096, False), (14336, 4096, True), (4096, 14336, False),
         (128256, 4096, False)]


@pytest.mark.parametrize("gpu", [H200, current_gpu()], ids=["h200", "here"])
def test_default_is_valid(gpu):
    for M in (1, 2, 7, 16, 17, 64, 130, 2048):
        for N, K, dual in LLAMA + [(7, 100, False), (1, 1, True), (257, 7, True)]:
            for dtype in ("float32", "bfloat16"):
                for w_dtype in ("same", "int8"):
                    epi = C.SWIGLU if dual else "acc"
                    p = C.problem(M, N, K, dtype, w_dtype=w_dtype, dual=dual, epilogue=epi)
                    c = T.default(p, gpu)
                    assert T.valid(c, p, gpu), (p, c)
    # on a GPU the vendor BLAS where it applies; Triton tiles where it does not (and in the interpreter)
    assert T.default(C.problem(2048, 4096, 4096, "bfloat16"), H200) == BLAS
    assert T.default(C.problem(2048, 4096, 4096, "bfloat16", w_dtype="int8"), H200) == BLAS
    tiles = T.default(C.problem(64, 4096, 4096, "bfloat16", w_dtype="int8"), H200)  # dequantising would dominate
    assert (tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["IMPL"]) == (64, 128, 0)
    tiles = T.default(C.problem(2048, 4096, 4096, "bfloat16", rms_eps=1e-5), H200)
    assert (tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["num_warps"], tiles["IMPL"]) == (128, 256, 8, 0)
    if current_gpu().is_interpreter:
        assert T.default(C.problem(2048, 4096, 4096, "bfloat16"), current_gpu())["IMPL"] == 0


def test_space_contains_and_valid_prune():
    p = C.problem(2048, 4096, 4096, "bfloat16")
    good = T.default(p, H200)
    assert T.space.contains(good)
    bad = [{**good, "BLOCK_M": 48}, {**good, "BLOCK_K": 64.0}, {**good, "GROUP_M": True},
           {k: v for k, v in good.items() if k != "num_stages"}, {**good, "extra": 1}, None, [good]]
    for c in bad:
        assert not T.space.contains(c), c
        assert not T.valid(c, p, H200), c
    # shared memory: 256x256x128 tiles over 5 stages do not fit
    huge = {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 5,
            "IMPL": 0}
    assert not T.valid(huge, p, H200)
    # dual doubles the accumulators: 128x256 on 8 warps fits once, not twice
    tile = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3,
            "IMPL": 0}
    assert T.valid(tile, p, H200)
    assert not T.valid(tile, {**p, "dual": True, "epilogue": C.SWIGLU}, H200)
    # tiles far larger than the problem
    skinny = C.problem(1, 4096, 4096)
    assert not T.valid({**tile, "num_warps": 4, "BLOCK_N": 16, "BLOCK_M": 128}, skinny, H200)


BLAS_EPILOGUES = {
    "plain": dict(),
    "bias": dict(bias=True, epilogue=("add", "acc", "bias")),
    "residual": dict(n_extra=1, epilogue=("add", "e0", "acc")),
    "swiglu": dict(dual=True, epilogue=C.SWIGLU),
    "general": dict(bias=True, n_extra=2, epilogue=("mul", ("gelu", ("add", "acc", "bias")), ("sub", "e0", "e1"))),
}


@pytest.mark.parametrize("w_dtype", ["same", "int8", "float8_e4m3fn"], ids=["plain-w", "int8-w", "fp8-w"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("hole", sorted(BLAS_EPILOGUES))
def test_vendor_blas_path(hole, dtype, w_dtype, device):
    """IMPL=1: the product through torch (cuBLAS on a GPU), each epilogue form against the reference;
    quantised weights dequantised by one pass first."""
    p = C.problem(37, 50, 1030, dtype, w_dtype=w_dtype, **BLAS_EPILOGUES[hole])  # K: a partial last block
    assert T.valid(BLAS, p, current_gpu())
    run(p, device, config=BLAS)
    run(p, device, config=BLAS, x_row_stride=p["K"] + 13, extra_row_stride=61)


def test_vendor_blas_takes_one_config_and_no_prologue():
    p = C.problem(2048, 4096, 4096, "bfloat16")
    blas_configs = [c for c in T.space.grid() if c["IMPL"] == 1 and T.valid(c, p, H200)]
    assert blas_configs == [BLAS]
    assert not T.valid(BLAS, C.problem(2048, 4096, 4096, "bfloat16", rms_eps=1e-5), H200)
    for w_dtype in ("int8", "float8_e4m3fn"):
        assert T.valid(BLAS, C.problem(2048, 4096, 4096, "bfloat16", w_dtype=w_dtype), H200)


def test_problem_checks():
    with pytest.raises(ValueError):
        C.problem(4, 4, 4, epilogue=("mul", "acc", "acc2"))  # acc2 without dual
    with pytest.raises(ValueError):
        C.problem(0, 4, 4)
    with pytest.raises(ValueError):
        C.problem(4, 4, 4, "float64")
    with pytest.raises(ValueError):
        C.problem(4, 4, 4, n_extra=1, epilogue=("add", "acc", "e1"))
    p = C.problem(4, 4, 4, dual=True, epilogue=C.SWIGLU)
    assert T.source(p) == T.source({**p, "epilogue": ["mul", ["silu", "acc"], "acc2"]})  # JSON round trip


def test_launch_rejects_bad_arguments(device):
    p = C.problem(4, 8, 16, "float16")
    outs, (x, w) = T.make_inputs(p, device, torch.Generator().manual_seed(0))
    mod = load_source(T.source(p))
    cfg = T.default(p, current_gpu())
    with pytest.raises(ValueError):
        mod.launch(outs[0], x.float(), w, eps=0.0, **cfg)
    with pytest.raises(ValueError):
        mod.launch(outs[0], x, w[:, :8], eps=0.0, **cfg)
    with pytest.raises(ValueError):
        mod.launch(outs[0].t(), x, w, eps=0.0, **cfg)


def test_cost():
    flops, nbytes = C.cost(C.problem(2, 3, 5, "bfloat16", w_dtype="int8", dual=True, epilogue=C.SWIGLU))
    assert flops == 2 * 2 * 3 * 5 * 2 + 2 * 3 * 2  # two dots, then mul and silu per output element
    assert nbytes == 2 * 5 * 2 + 2 * 3 * 5 * 1 + 2 * 3 * 4 + 2 * 3 * 2  # x, int8 W and W2, scales, out


# IMPL=2: persistent TMA tiles. Shapes with M and N no multiple of the tiles and a partial last K box (K a
# multiple of 8, N of 8: TMA's 16-byte rows in every dtype); 520x1032 has more 64x64 tiles than an H200 has
# SMs, so programs walk several tiles there too.
TMA_HOLES = {
    "plain": dict(),
    "residual": dict(n_extra=1, epilogue=("add", "acc", "e0")),
    "bias": dict(bias=True, epilogue=("add", "acc", "bias")),
    "dual_swiglu": dict(dual=True, epilogue=C.SWIGLU),
    "everything": dict(dual=True, bias=True, n_extra=2,
                       epilogue=("add", ("mul", ("silu", ("add", "acc", "bias")), ("mul", "acc2", "e1")), "e0")),
}
TMA_TILES = [  # (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
    (64, 64, 32, 1, 4, 1),
    (64, 128, 64, 4, 4, 3),  # BLOCK_N >= 128: the epilogue stores two halves
    (128, 64, 32, 8, 8, 4),
    (128, 256, 64, 8, 8, 3),
]


def tma_config(bm, bn, bk, group, warps, stages):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps,
            "num_stages": stages, "IMPL": 2}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("hole", sorted(TMA_HOLES))
def test_tma_holes(hole, dtype, device):
    p = C.problem(130, 264, 104, dtype, **TMA_HOLES[hole])
    gpu = current_gpu()
    configs = [c for c in map(lambda t: tma_config(*t), TMA_TILES) if T.valid(c, p, gpu)]
    assert len(configs) >= 2
    for c in configs:
        run(p, device, config=c)


@pytest.mark.parametrize("hole", ["plain", "dual_swiglu"])
def test_tma_many_tiles_per_program(hole, device):
    p = C.problem(520, 1032, 72, "bfloat16", **TMA_HOLES[hole])
    run(p, device, config=tma_config(64, 64, 32, 8, 4, 3))


# Dual weights run as one dot over a [2, BLOCK_N, BLOCK_K] box of both weights (stacked) or as two dots
# sharing the x box (the module constant _TMA_DUAL_STACKED picks): both are tested.
DUAL_PATHS = {"stacked": True, "two_dots": False}


@pytest.mark.parametrize("path", sorted(DUAL_PATHS))
@pytest.mark.parametrize("stages", [2, 3, 4])
def test_tma_dual_pipelined(stages, path, device, monkeypatch):
    """Both dual paths are right at every pipeline depth, run after run (a shared-memory race would move)."""
    p = C.problem(300, 512, 1024, "bfloat16", **TMA_HOLES["dual_swiglu"])
    monkeypatch.setattr(load_source(T.source(p)), "_TMA_DUAL_STACKED", DUAL_PATHS[path])
    c = tma_config(128, 128, 64, 8, 8, stages)
    assert T.valid(c, p, H200)
    for seed in range(2):
        run(p, device, config=c, seed=seed)


@pytest.mark.parametrize("path", sorted(DUAL_PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tma_dual_paths_everything(dtype, path, device, monkeypatch):
    p = C.problem(130, 264, 104, dtype, **TMA_HOLES["everything"])
    monkeypatch.setattr(load_source(T.source(p)), "_TMA_DUAL_STACKED", DUAL_PATHS[path])
    run(p, device, config=tma_config(64, 128, 32, 4, 4, 3))


@pytest.mark.parametrize("layout", ["w2_below_w", "one_tensor", "same_tensor"])
def test_tma_dual_weights_anywhere(layout, device):
    """The stacked descriptor starts at whichever weight is lower in memory (the epilogue swaps them back);
    the same tensor twice (no distance to stride by) takes the two dots."""
    p = C.problem(96, 136, 80, "bfloat16", **TMA_HOLES["dual_swiglu"])
    outs, (x, w, w2) = T.make_inputs(p, device, torch.Generator().manual_seed(random.randrange(2**31)))
    both = torch.empty(2 * p["N"], p["K"], dtype=w.dtype, device=device)
    if layout == "w2_below_w":
        both[: p["N"]], both[p["N"]:] = w2, w
        w2, w = both[: p["N"]], both[p["N"]:]
    elif layout == "one_tensor":
        both[: p["N"]], both[p["N"]:] = w, w2
        w, w2 = both[: p["N"]], both[p["N"]:]
    else:
        w2 = w
    load_source(T.source(p)).launch(*outs, x, w, w2, eps=0.0, **tma_config(64, 64, 32, 1, 4, 2))
    assert_close(outs[0], T.reference(p, [x, w, w2])[0], what=layout)


def test_tma_strided_x_and_extras(device):
    p = C.problem(70, 136, 96, "bfloat16", n_extra=1, epilogue=("add", "acc", "e0"))
    run(p, device, config=tma_config(64, 64, 32, 4, 4, 2), x_row_stride=104, extra_row_stride=151)


def test_tma_valid_prunes():
    p = C.problem(2048, 4096, 4096, "bfloat16")
    tile = tma_config(128, 256, 64, 8, 8, 3)
    assert T.valid(tile, p, H200)
    assert T.valid({**tile, "num_stages": 4}, p, H200)  # 196608 + 32768 bytes (the store in two halves)
    assert not T.valid({**tile, "num_stages": 5}, p, H200)
    residual = {**p, "n_extra": 1, "epilogue": ("add", "acc", "e0")}  # its tile changes layout in shared memory
    assert T.valid(tile, residual, H200) and not T.valid({**tile, "num_stages": 4}, residual, H200)
    dual = {**p, "dual": True, "epilogue": C.SWIGLU}
    assert not T.valid(tile, dual, H200)  # two 128x256 accumulators
    assert T.valid({**tile, "BLOCK_N": 128, "num_stages": 4}, dual, H200)
    assert not T.valid({**tile, "BLOCK_M": 32, "BLOCK_N": 128}, p, H200)  # wgmma: 64 rows a warp group
    # not taken: a prologue, quantised weights, rows that are no multiple of 16 bytes, pre-Hopper GPUs
    assert not T.valid(tile, {**p, "rms_eps": 1e-5}, H200)
    assert not T.valid(tile, {**p, "w_dtype": "int8"}, H200)
    assert not T.valid(tile, {**p, "K": 4100}, H200)
    assert not T.valid(tile, {**p, "N": 4100}, H200)
    fp32 = {**p, "dtype": "float32", "K": 4100, "N": 4100}  # rows of 16400 bytes
    assert not T.valid(tile, fp32, H200)  # 3 x 96 KiB of fp32 boxes
    assert T.valid({**tile, "BLOCK_K": 32}, fp32, H200)
    ampere = dataclasses.replace(H200, name="NVIDIA A100", capability=(8, 0))
    assert not T.valid(tile, p, ampere)


def test_tma_default_and_alternatives():
    for N, K, dual in LLAMA:
        p = C.problem(2048, N, K, "bfloat16", dual=dual, epilogue=C.SWIGLU if dual else "acc")
        tma = matmul_template.tma_default(p, H200)
        assert tma == (tma_config(128, 128, 64, 8, 8, 4) if dual else tma_config(128, 256, 64, 8, 8, 3))
        assert matmul_template.alternatives(p, H200) == [BLAS, tma]
        assert T.default(p, H200) == BLAS  # the default stays the BLAS
    rms = C.problem(2048, 4096, 4096, "bfloat16", rms_eps=1e-5)
    assert matmul_template.tma_default(rms, H200) is None and matmul_template.alternatives(rms, H200) == []
    small = C.problem(40, 72, 80, "float16")
    assert matmul_template.tma_default(small, H200) == tma_config(64, 128, 64, 1, 8, 3)


def test_tma_launch_takes_the_blas_for_unaligned_rows(device):
    """A view whose rows are off TMA's 16-byte alignment runs the same product through the BLAS, and
    a prologue (no IMPL=2 config is valid for it) is refused."""
    p = C.problem(16, 64, 32, "float16", n_extra=1, epilogue=("add", "acc", "e0"))
    outs, (x, w, e0) = T.make_inputs(p, device, torch.Generator().manual_seed(0))
    mod = load_source(T.source(p))
    cfg = tma_config(64, 64, 32, 1, 4, 2)
    xs = torch.zeros(16, 37, dtype=x.dtype, device=device)[:, :32]  # rows 74 bytes apart
    xs.copy_(x)
    mod.launch(outs[0], xs, w, e0, eps=0.0, **cfg)
    assert_close(outs[0], T.reference(p, [x, w, e0])[0])
    rms = C.problem(16, 64, 32, "float16", rms_eps=1e-5)
    outs, ins = T.make_inputs(rms, device, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="IMPL=2"):
        load_source(T.source(rms)).launch(*outs, *ins, eps=1e-5, **cfg)

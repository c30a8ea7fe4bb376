"""Kernel tests for the gemv template (kernel_templates/gemv.py.j2): 1..16 rows, odd shapes, every dtype and
hole, random valid configs, the search space and default, against the fp32 reference of _mm_common."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from ds4c.device import H200, current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

T = get("gemv")


def run(p, device, config=None, x_row_stride=None, seed=None):
    """Launch p on fresh random inputs (outputs poisoned with NaN) and compare to the reference."""
    seed = random.randrange(2**31) if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    outs, ins = T.make_inputs(p, device, gen)
    if x_row_stride is not None:  # x as a view with a padded row stride
        buf = torch.randn(p["M"], x_row_stride, generator=gen).to(ins[0].dtype).to(device)
        ins[0] = buf[:, : p["K"]]
    outs[0].fill_(float("nan"))
    config = config or T.default(p, current_gpu())
    assert T.valid(config, p, current_gpu()), config
    load_source(T.source(p)).launch(*outs, *ins, **T.launch_kwargs(p), **config)
    assert_close(outs[0], T.reference(p, ins)[0], what=f"{p} {config} seed={seed}")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M,N,K", [(1, 7, 100), (2, 129, 257), (5, 100, 129), (16, 257, 7), (1, 257, 1030)])
def test_plain(M, N, K, dtype, device):
    run(C.problem(M, N, K, dtype), device)


HOLES = {
    "rms": dict(rms_eps=1e-5),
    "dual_swiglu": dict(dual=True, epilogue=C.SWIGLU),
    "bias_gelu_tanh": dict(bias=True, epilogue=("gelu_tanh", ("add", "acc", "bias"))),
    "residual": dict(n_extra=1, epilogue=("add", "acc", "e0")),
    "int8": dict(w_dtype="int8"),
    "fp8": dict(w_dtype="float8_e4m3fn"),
    "int8_rms_dual": dict(w_dtype="int8", rms_eps=1e-6, dual=True, epilogue=C.SWIGLU),
    "fp8_everything": dict(w_dtype="float8_e4m3fn", rms_eps=1e-5, dual=True, bias=True, n_extra=2,
                           epilogue=("add", ("mul", ("silu", ("add", "acc", "bias")), "acc2"),
                                     ("sub", "e0", "e1"))),
}


@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("hole", sorted(HOLES))
def test_holes(hole, dtype, M, device):
    run(C.problem(M, 33, 200, dtype, **HOLES[hole]), device)


@pytest.mark.parametrize("hole", ["rms", "dual_swiglu", "int8"])
def test_holes_fp32_16_rows(hole, device):
    run(C.problem(16, 20, 129, "float32", **HOLES[hole]), device)


def test_strided_x(device):
    run(C.problem(4, 70, 96, "bfloat16", rms_eps=1e-5), device, x_row_stride=131)
    run(C.problem(1, 70, 96, "bfloat16", rms_eps=1e-5), device, x_row_stride=131)


@pytest.mark.parametrize("M", [1, 3])
def test_rms_prologue_is_the_norm(M, device):
    """The prologue matches RMSNorm (with its weight) followed by the product, not just the reference."""
    p = C.problem(M, 40, 300, "float32", rms_eps=1e-5)
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    outs, (x, g, w) = T.make_inputs(p, device, gen)
    load_source(T.source(p)).launch(*outs, x, g, w, **T.launch_kwargs(p), **T.default(p, current_gpu()))
    xn = torch.nn.functional.rms_norm(x.cpu().double(), (300,), g.cpu().double(), eps=1e-5)
    assert_close(outs[0], xn @ w.cpu().double().T)


@pytest.mark.parametrize("M,hole", [(1, "int8_rms_dual"), (6, "residual"), (4, "int8")])
def test_random_valid_configs(M, hole, device):
    """Every config the tuner may draw (valid ones from the grid) computes the right result."""
    p = C.problem(M, 40, 600, "bfloat16", **HOLES[hole])
    gpu = current_gpu()
    configs = [c for c in T.space.grid() if T.valid(c, p, gpu)]
    assert len(configs) >= 10
    for c in random.sample(configs, 5):
        run(p, device, config=c)


@pytest.mark.parametrize("M", [1, 2])
def test_every_int8_value_converts_exactly(M, device):
    """Row n of W holds the int8 value n - 128 (scale 1) and x is all ones: out[:, n] = K * (n - 128), exact in
    fp32 (on the GPU this is the bit-trick conversion, in the interpreter a plain cast)."""
    K = 192
    p = C.problem(M, 256, K, "float32", w_dtype="int8")
    w = (torch.arange(256) - 128).to(torch.int8)[:, None].expand(256, K).contiguous().to(device)
    scale = torch.ones(256, C.scale_groups(K), device=device)
    out = torch.full((M, 256), float("nan"), device=device)
    x = torch.ones(M, K, device=device)
    for c in ({"BLOCK_N": 8, "BLOCK_K": 64, "num_warps": 2, "num_stages": 1},
              {"BLOCK_N": 8, "BLOCK_K": 128, "num_warps": 2, "num_stages": 2, "TMA": 1}, T.default(p, current_gpu())):
        load_source(T.source(p)).launch(out, x, w, scale, **T.launch_kwargs(p), **c)
        want = (K * (torch.arange(256) - 128)).float()[None, :].expand(M, 256)
        assert torch.equal(out.cpu(), want), c


def test_same_problem_as_matmul(device):
    """gemv and matmul take one problem and the same launch arguments, and agree."""
    p = C.problem(3, 50, 77, "float16", bias=True, epilogue=("add", "acc", "bias"))
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    outs, ins = T.make_inputs(p, device, gen)
    mm = get("matmul")
    other = torch.full_like(outs[0], float("nan"))
    load_source(T.source(p)).launch(outs[0], *ins, **T.launch_kwargs(p), **T.default(p, current_gpu()))
    load_source(mm.source(p)).launch(other, *ins, **mm.launch_kwargs(p), **mm.default(p, current_gpu()))
    assert_close(outs[0], other.float())


LLAMA = [(6144, 4096, False), (4096, 4096, False), (14336, 4096, True), (4096, 14336, False),
         (128256, 4096, False)]


@pytest.mark.parametrize("gpu", [H200, current_gpu()], ids=["h200", "here"])
def test_default_is_valid(gpu):
    for M in range(1, 17):
        for N, K, dual in LLAMA + [(7, 100, False), (1, 1, True), (257, 7, True)]:
            for dtype, w_dtype in (("bfloat16", "same"), ("float32", "int8"), ("float16", "float8_e4m3fn")):
                epi = C.SWIGLU if dual else "acc"
                p = C.problem(M, N, K, dtype, w_dtype=w_dtype, dual=dual, epilogue=epi)
                c = T.default(p, gpu)
                assert T.valid(c, p, gpu), (p, c)
    decode = T.default(C.problem(1, 4096, 4096, "bfloat16"), H200)
    assert decode == {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "num_stages": 2, "TMA": 0}
    int8 = T.default(C.problem(1, 4096, 14336, "bfloat16", w_dtype="int8"), H200)
    assert int8 == {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 1, "num_stages": 3, "TMA": 1}
    dual = C.problem(1, 14336, 4096, "bfloat16", w_dtype="int8", dual=True, epilogue=C.SWIGLU)
    assert T.default(dual, H200) == {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 1, "num_stages": 1, "TMA": 0}
    several = T.default(C.problem(3, 14336, 4096, "bfloat16", w_dtype="int8", dual=True, epilogue=C.SWIGLU), H200)
    assert several["TMA"] == 0 and several["BLOCK_K"] == 1024


def test_space_and_rows():
    p = C.problem(1, 4096, 4096, "bfloat16")
    good = T.default(p, H200)
    for c in ({**good, "BLOCK_N": 12}, {**good, "BLOCK_K": 512.0}, {**good, "BLOCK_M": 1}, {}, "x"):
        assert not T.space.contains(c), c
    # the fp32 product tile must fit in registers: 16 rows of a 64x1024 tile do not
    big = {"BLOCK_N": 64, "BLOCK_K": 1024, "num_warps": 8, "num_stages": 2, "TMA": 0}
    assert not T.valid(big, C.problem(16, 4096, 4096, "bfloat16"), H200)
    # more than 16 rows is matmul's job
    p17 = C.problem(17, 64, 64, "bfloat16")
    assert not any(T.valid(c, p17, H200) for c in T.space.grid())
    with pytest.raises(ValueError):
        T.source(p17)


def test_launch_rejects_wrong_rows(device):
    p = C.problem(1, 8, 64, "float16")
    outs, (x, w) = T.make_inputs(p, device, torch.Generator().manual_seed(0))
    mod = load_source(T.source(p))
    x2, out2 = torch.cat([x, x]), torch.empty(2, 8, dtype=x.dtype, device=device)
    with pytest.raises(ValueError):
        mod.launch(out2, x2, w, eps=0.0, **T.default(p, current_gpu()))


TMA = {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 1, "num_stages": 2, "TMA": 1}


@pytest.mark.parametrize("hole", ["int8", "fp8", "int8_rms_dual", "fp8_everything"])
def test_tma_tiles(hole, device):
    """Quantised weight tiles through tensor descriptors: N off the tile (the descriptor's zeros past the
    last row), K a whole number of scale groups but not of K tiles (zeros past the last group)."""
    run(C.problem(1, 33, 448, "bfloat16", **HOLES[hole]), device, config=TMA)
    run(C.problem(1, 33, 448, "float32", **HOLES[hole]), device, config={**TMA, "BLOCK_K": 64})


def test_tma_takes_quantised_weights_of_whole_groups_on_hopper():
    q = C.problem(1, 4096, 4096, "bfloat16", w_dtype="int8")
    assert T.valid(TMA, q, H200)
    assert not T.valid(TMA, C.problem(1, 4096, 4096, "bfloat16"), H200)  # bf16 weights: the pointer loads
    assert not T.valid(TMA, C.problem(1, 4096, 4100, "bfloat16", w_dtype="int8"), H200)  # a partial group
    assert not T.valid(TMA, C.problem(3, 4096, 4096, "bfloat16", w_dtype="int8"), H200)  # one row only
    ampere = dataclasses.replace(H200, capability=(8, 0))
    assert not T.valid(TMA, q, ampere)
    assert T.default(q, ampere)["TMA"] == 0
    assert T.space.complete({k: v for k, v in TMA.items() if k != "TMA"})["TMA"] == 0  # stored before TMA


def test_tma_falls_back_to_pointer_loads_off_alignment(device):
    """A weight that starts off TMA's 16-byte alignment (a view into a larger buffer) is read by pointers."""
    p = C.problem(1, 40, 192, "float32", w_dtype="int8", n_extra=1, epilogue=("add", "acc", "e0"))
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    outs, (x, w, ws, e0) = T.make_inputs(p, device, gen)
    buf = torch.empty(w.numel() + 8, dtype=torch.int8, device=device)
    shifted = buf[8:].view(w.shape)
    shifted.copy_(w)
    assert shifted.data_ptr() % 16 != 0
    outs[0].fill_(float("nan"))
    load_source(T.source(p)).launch(outs[0], x, shifted, ws, e0, **T.launch_kwargs(p), **TMA)
    assert_close(outs[0], T.reference(p, [x, w, ws, e0])[0])

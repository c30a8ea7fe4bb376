"""flash_attention template: odd sequence lengths, GQA head groups, causal and not (T < S too), three dtypes,
strided q/k/v views, poisoned outputs, random valid configs, and the default config's validity."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER, GpuInfo
from ds4c.kernel_templates import flash_attention as flash
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

TEMPLATE = get("flash_attention")

# (B, Hq, Hkv, T, S, D, dtype, causal)
CASES = [
    (1, 4, 4, 1, 1, 16, "float32", True),
    (1, 4, 4, 17, 17, 16, "float32", True),
    (2, 6, 2, 17, 100, 64, "float16", True),
    (1, 9, 3, 100, 100, 64, "bfloat16", True),
    (1, 6, 2, 129, 129, 128, "bfloat16", False),
    (1, 9, 3, 1, 129, 128, "float16", True),
    (2, 4, 4, 100, 129, 16, "float16", False),
    (1, 6, 2, 17, 17, 128, "float32", False),
    (1, 4, 4, 129, 129, 64, "float32", True),
]


def _problem(B, Hq, Hkv, T, S, D, dtype, causal):
    return {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "S": S, "D": D, "dtype": dtype, "causal": causal,
            "scale": D ** -0.5}


def _seeded():
    seed = random.SystemRandom().randrange(2**31)
    return seed, torch.Generator().manual_seed(seed)


def _run(problem, config, device, layout=None):
    seed, gen = _seeded()
    outs, ins = TEMPLATE.make_inputs(problem, device, gen)
    if layout is not None:
        ins = [layout(x) for x in ins]
    assert torch.isnan(outs[0]).all()  # poisoned: an element the kernel skips stays NaN and fails below
    mod = load_source(TEMPLATE.source(problem))
    mod.launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config)
    ref = TEMPLATE.reference(problem, ins)[0]
    assert_close(outs[0], ref, dtype_of(problem["dtype"]), what=f"{problem} {config} seed={seed}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_default_matches_reference(case, device):
    problem = _problem(*case)
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device)


def _contiguous(x):
    return x.contiguous()


def _padded(x):
    """A view into a wider buffer: D is unit-stride but every other stride is odd-sized."""
    B, H, T, D = x.shape
    wide = torch.full((B, T + 3, H, D + 8), float("nan"), dtype=x.dtype, device=x.device)
    wide[:, :T, :, :D] = x.transpose(1, 2)
    return wide[:, :T, :, :D].transpose(1, 2)


@pytest.mark.parametrize("layout", [_contiguous, _padded], ids=["contiguous", "padded"])
def test_layouts(layout, device):
    problem = _problem(2, 6, 2, 33, 70, 64, "float16", True)
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device, layout)


@pytest.mark.parametrize("case", [CASES[3], CASES[6]], ids=["causal-gqa-bf16", "full-fp16-T<S"])
def test_output_written_tokens_major(case, device):
    """o_bthd: the kernel writes [B,T,Hq,D] (what transpose(1, 2) of its usual output holds), every element."""
    problem = {**_problem(*case), "o_bthd": True}
    outs, _ = TEMPLATE.make_inputs(problem, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert outs[0].shape == (case[0], case[3], case[1], case[5])
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device)


def test_random_valid_configs(device):
    problem = _problem(1, 6, 2, 100, 129, 64, "float16", True)
    configs = [c for c in TEMPLATE.space.grid() if TEMPLATE.valid(c, problem, INTERPRETER)]
    assert len(configs) > 10
    for config in random.Random().sample(configs, 6):
        _run(problem, config, device)


def test_rows_without_keys_are_zero(device):
    # causal with T > S: query i sees keys j <= i - 7, so the first 7 rows see nothing
    problem = _problem(1, 2, 1, 24, 17, 16, "float32", True)
    seed, gen = _seeded()
    outs, ins = TEMPLATE.make_inputs(problem, device, gen)
    mod = load_source(TEMPLATE.source(problem))
    mod.launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **TEMPLATE.default(problem, INTERPRETER))
    assert (outs[0][:, :, :7] == 0).all()
    assert_close(outs[0], TEMPLATE.reference(problem, ins)[0], what=f"seed={seed}")


@pytest.mark.parametrize("gpu", [INTERPRETER, H200], ids=["interpreter", "h200"])
def test_default_is_valid(gpu):
    for T, S in ((1, 1), (17, 100), (2048, 2048), (1, 4096), (8192, 8192)):
        for D in (16, 32, 64, 128, 256):
            for dtype in ("float32", "float16", "bfloat16"):
                for Hq, Hkv in ((32, 8), (4, 4), (9, 3)):
                    problem = _problem(1, Hq, Hkv, T, S, D, dtype, True)
                    config = TEMPLATE.default(problem, gpu)
                    assert TEMPLATE.space.contains(config), (problem, config)
                    assert TEMPLATE.valid(config, problem, gpu), (problem, config)


def test_valid_prunes():
    problem = _problem(1, 32, 8, 2048, 2048, 128, "bfloat16", True)
    big = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2, "IMPL": 0}
    small_smem = GpuInfo("small", (8, 0), 100, 48 * 1024, 65536, 1 << 20)
    assert TEMPLATE.valid(big, problem, H200)
    assert not TEMPLATE.valid(big, problem, small_smem)
    assert not TEMPLATE.valid({**big, "num_stages": 4}, problem, H200)  # K/V stages overflow shared memory
    assert not TEMPLATE.valid({**big, "num_warps": 2}, problem, H200)  # spills registers
    assert not TEMPLATE.valid({**big, "BLOCK_M": 100}, problem, H200)  # not a candidate
    odd_d = _problem(1, 4, 4, 64, 64, 96, "float16", True)
    assert not any(TEMPLATE.valid(c, odd_d, H200) for c in TEMPLATE.space.grid())
    with pytest.raises(ValueError):
        TEMPLATE.source(odd_d)
    with pytest.raises(ValueError):
        TEMPLATE.source(_problem(1, 6, 4, 64, 64, 64, "float16", True))  # 6 % 4 != 0


VENDOR = [{**flash.VENDOR_TILES, "IMPL": impl} for impl in (1, 2)]


@pytest.mark.parametrize("config", VENDOR, ids=["cudnn", "flash2"])
@pytest.mark.parametrize("o_bthd", [False, True], ids=["bhtd", "bthd"])
@pytest.mark.parametrize("case", [(1, 32, 8, 129, 129, 128, "bfloat16", True), (2, 6, 2, 33, 70, 64, "float16", False),
                                  (1, 4, 4, 17, 17, 64, "float16", True)], ids=["causal-gqa", "full-T<S", "mha"])
def test_vendor_impl_matches_reference(case, o_bthd, config, device):
    """IMPL 1/2 (torch SDPA through cuDNN / FlashAttention-2 on a GPU, its math backend on the CPU): GQA heads,
    strided q/k/v views as projections give them, both output layouts, every element written."""
    problem = {**_problem(*case), "o_bthd": o_bthd}
    gpu = INTERPRETER if device.type == "cpu" else H200
    assert TEMPLATE.valid(config, problem, gpu)
    _run(problem, config, device, _padded)


@pytest.mark.parametrize("config", VENDOR, ids=["cudnn", "flash2"])
@pytest.mark.parametrize("o_bthd", [False, True], ids=["bhtd", "bthd"])
def test_vendor_impl_own_output(o_bthd, config, device):
    """launch(own_output=True) returns attention shaped as out: SDPA's own tensor where it is laid out as out
    (out then stays untouched), else out filled. q read through transpose(1, 2) of [B,T,Hq,D], as the prefill
    plan lays it out: cuDNN answers in q's layout, so for o_bthd no copy is made; the math backend (CPU)
    answers [B,Hq,T,D]. Without own_output, out is always the answer."""
    problem = {**_problem(1, 8, 2, 67, 67, 64, "bfloat16", True), "o_bthd": o_bthd}
    seed, gen = _seeded()
    outs, ins = TEMPLATE.make_inputs(problem, device, gen)
    q = ins[0].transpose(1, 2).contiguous().transpose(1, 2)  # [B,Hq,T,D] view of [B,T,Hq,D]
    ins = [q, *ins[1:]]
    mod = load_source(TEMPLATE.source(problem))
    kw = {**TEMPLATE.launch_kwargs(problem), **config}
    r = mod.launch(*outs, *ins, own_output=True, **kw)
    ref = TEMPLATE.reference(problem, ins)[0]
    assert r.shape == outs[0].shape and r.is_contiguous()
    assert_close(r, ref, torch.bfloat16, what=f"{problem} {config} seed={seed}")
    own = r.data_ptr() != outs[0].data_ptr()
    assert torch.isnan(outs[0]).all() == own  # untouched exactly when the answer is SDPA's own tensor
    if device.type == "cpu":
        assert own is not o_bthd
    elif config["IMPL"] == 1 and o_bthd:
        assert own, "cuDNN answered in another layout than q's: the prefill plan copies its attention output"
    assert mod.launch(*outs, *ins, **kw) is outs[0]
    assert_close(outs[0], ref, torch.bfloat16, what=f"{problem} {config} seed={seed}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("config", VENDOR, ids=["cudnn", "flash2"])
def test_vendor_impl_replays_in_a_cuda_graph(config):
    """Plans replay prefill as one CUDA graph: the vendor path records and replays like a kernel, and a replay
    over new inputs gives their attention."""
    from ds4c.runtime.graphs import capture

    problem = {**_problem(1, 32, 8, 300, 300, 128, "bfloat16", True), "o_bthd": True}
    dev = torch.device("cuda")
    mod = load_source(TEMPLATE.source(problem))
    outs, ins = TEMPLATE.make_inputs(problem, dev, torch.Generator().manual_seed(1))
    graph, _ = capture(lambda: mod.launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config))
    _, fresh = TEMPLATE.make_inputs(problem, dev, torch.Generator().manual_seed(2))
    for static, x in zip(ins, fresh, strict=True):
        static.copy_(x)
    graph.replay()
    assert_close(outs[0], TEMPLATE.reference(problem, ins)[0], torch.bfloat16, what=f"{config}")


def test_vendor_impl_validity():
    """One config per vendor IMPL; causal only with T == S (SDPA's mask is top-left); 16-bit on a GPU."""
    square = _problem(1, 32, 8, 2048, 2048, 128, "bfloat16", True)
    for config in VENDOR:
        assert TEMPLATE.valid(config, square, H200)
        assert not TEMPLATE.valid({**config, "BLOCK_M": 128}, square, H200)
        assert not TEMPLATE.valid(config, {**square, "T": 1}, H200)  # causal, T < S
        assert TEMPLATE.valid(config, {**square, "T": 1, "causal": False}, H200)
        assert not TEMPLATE.valid(config, {**square, "dtype": "float32"}, H200)
        assert TEMPLATE.valid(config, {**square, "dtype": "float32"}, INTERPRETER)
    grid = [c for c in TEMPLATE.space.grid() if c["IMPL"] and TEMPLATE.valid(c, square, H200)]
    assert sorted(grid, key=lambda c: c["IMPL"]) == VENDOR
    assert TEMPLATE.default(square, H200)["IMPL"] == 0


def test_cost_counts_visible_pairs():
    full = _problem(2, 8, 2, 64, 64, 128, "bfloat16", False)
    causal = {**full, "causal": True}
    flops_full, nbytes = TEMPLATE.cost(full)
    assert flops_full == 4 * 2 * 8 * 64 * 64 * 128
    assert TEMPLATE.cost(causal)[0] == 4 * 2 * 8 * 128 * (64 * 65 // 2)
    assert nbytes == 2 * 2 * 128 * (2 * 8 * 64 + 2 * 2 * 64)

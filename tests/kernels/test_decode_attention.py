"""decode_attention template: odd cache sizes and kv_len, GQA head groups, three dtypes, strided q and cache
views, NaN past kv_len, poisoned outputs, kv_len changed on the device between identical launches (as in a
CUDA graph replay), random valid configs, and the default config's validity."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.kernel_templates.decode_attention import bytes_moved
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

TEMPLATE = get("decode_attention")

# (B, Hq, Hkv, S_max, D, dtype)
CASES = [
    (1, 4, 4, 1, 16, "float32"),
    (2, 4, 4, 17, 16, "float16"),
    (2, 6, 2, 100, 64, "float16"),
    (1, 9, 3, 129, 64, "bfloat16"),
    (1, 6, 2, 129, 128, "bfloat16"),
    (2, 9, 3, 17, 128, "float32"),
    (1, 4, 4, 100, 128, "float16"),
    (1, 6, 2, 256, 16, "float32"),
]


def _problem(B, Hq, Hkv, S_max, D, dtype):
    return {"B": B, "Hq": Hq, "Hkv": Hkv, "S_max": S_max, "D": D, "dtype": dtype, "scale": D ** -0.5}


def _seeded():
    seed = random.SystemRandom().randrange(2**31)
    return seed, torch.Generator().manual_seed(seed)


def _inputs(problem, device, kv_len=None):
    seed, gen = _seeded()
    outs, ins = TEMPLATE.make_inputs(problem, device, gen)
    if kv_len is not None:  # move the valid prefix boundary, keeping NaN past it
        q, k, v, n = ins
        k, v = k.clone(), v.clone()
        k[:, :, kv_len:] = float("nan")
        v[:, :, kv_len:] = float("nan")
        k[:, :, :kv_len] = k[:, :, :kv_len].nan_to_num(0.5)
        v[:, :, :kv_len] = v[:, :, :kv_len].nan_to_num(-0.5)
        ins = [q, k, v, torch.tensor([kv_len], dtype=n.dtype, device=n.device)]
    n = int(ins[3].item())
    if n < problem["S_max"]:
        assert torch.isnan(ins[1][:, :, n:]).all() and torch.isnan(ins[2][:, :, n:]).all()
    assert torch.isnan(outs[0]).all()
    return seed, outs, ins


def _check(problem, config, seed, outs, ins):
    ref = TEMPLATE.reference(problem, ins)[0]
    what = f"{problem} {config} kv_len={int(ins[3].item())} seed={seed}"
    assert_close(outs[0], ref, dtype_of(problem["dtype"]), what=what)


def _run(problem, config, device, kv_len=None, layout=None):
    seed, outs, ins = _inputs(problem, device, kv_len)
    if layout is not None:
        ins = [layout(x) for x in ins[:3]] + ins[3:]
    mod = load_source(TEMPLATE.source(problem))
    mod.launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config)
    _check(problem, config, seed, outs, ins)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_default_matches_reference(case, device):
    problem = _problem(*case)
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device)


@pytest.mark.parametrize("kv_len", [1, 16, 17, 64, 129])
def test_kv_len_edges(kv_len, device):
    problem = _problem(1, 6, 2, 129, 64, "float16")
    config = {"BLOCK_S": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}
    _run(problem, config, device, kv_len=kv_len)


def _token_major(x):
    """The cache or query stored as [B, S, H, D] and viewed as [B, H, S, D]."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def test_token_major_layout(device):
    problem = _problem(2, 9, 3, 100, 64, "bfloat16")
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device, layout=_token_major)


def test_kv_len_changes_between_identical_launches(device):
    """Same tensors, same launch, kv_len rewritten in place: what a CUDA graph replay does."""
    problem = _problem(1, 6, 2, 129, 64, "float16")
    config = TEMPLATE.default(problem, INTERPRETER)
    seed, outs, ins = _inputs(problem, device, kv_len=129)
    q, k, v, kv_len = ins
    kv_len = kv_len.to(torch.int32)  # int32 works as well as int64
    mod = load_source(TEMPLATE.source(problem))
    for n in (5, 129, 64, 1):
        kv_len.fill_(n)
        outs[0].fill_(float("nan"))
        mod.launch(outs[0], q, k, v, kv_len, **TEMPLATE.launch_kwargs(problem), **config)
        _check(problem, config, seed, outs, [q, k, v, kv_len])


def test_random_valid_configs(device):
    problem = _problem(1, 9, 3, 129, 64, "float16")
    configs = [c for c in TEMPLATE.space.grid() if TEMPLATE.valid(c, problem, INTERPRETER)]
    assert len(configs) > 10
    for config in random.Random().sample(configs, 6):
        _run(problem, config, device)


@pytest.mark.parametrize("gpu", [INTERPRETER, H200], ids=["interpreter", "h200"])
def test_default_is_valid(gpu):
    for S_max in (1, 17, 129, 4096, 32768):
        for D in (16, 64, 128, 256):
            for dtype in ("float32", "float16", "bfloat16"):
                for B, Hq, Hkv in ((1, 32, 8), (8, 32, 8), (1, 4, 4), (4, 9, 3), (1, 64, 1)):
                    problem = _problem(B, Hq, Hkv, S_max, D, dtype)
                    config = TEMPLATE.default(problem, gpu)
                    assert TEMPLATE.space.contains(config), (problem, config)
                    assert TEMPLATE.valid(config, problem, gpu), (problem, config)


def test_valid_prunes():
    problem = _problem(1, 32, 8, 4096, 128, "bfloat16")
    ok = {"BLOCK_S": 256, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    assert TEMPLATE.valid(ok, problem, H200)
    assert not TEMPLATE.valid({**ok, "BLOCK_S": 32}, problem, H200)  # inner step longer than a split
    assert not TEMPLATE.valid({**ok, "BLOCK_N": 128, "num_warps": 1}, problem, H200)  # spills
    assert not TEMPLATE.valid({**ok, "BLOCK_S": 1024}, _problem(1, 4, 4, 100, 64, "float16"), H200)
    assert not any(TEMPLATE.valid(c, _problem(1, 4, 4, 64, 80, "float16"), H200)
                   for c in TEMPLATE.space.grid())


def test_cost_reads_only_live_cache():
    problem = _problem(1, 32, 8, 4096, 128, "bfloat16")
    flops, nbytes = TEMPLATE.cost(problem)
    assert flops == 4 * 32 * 4096 * 128
    assert nbytes == bytes_moved(problem, 4096)
    assert bytes_moved(problem, 2048) == 2 * 128 * (2 * 8 * 2048 + 2 * 32)

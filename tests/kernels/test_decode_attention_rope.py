"""decode_attention_rope template: the attention output against the fp64 reference, and the caches: row pos
holds the rotated key and the value, every other row is untouched (the history bit for bit, NaN past pos
still NaN). Odd cache sizes, GQA head groups, three dtypes, pos on and beside split edges, random valid
configs, pos and kv_len moved on the device between identical launches, and agreement with the two
kernels it replaces (rope_kv, then decode_attention)."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.kernel_templates.decode_attention_rope import written_rows
from ds4c.kernel_templates.rope import rope_tables
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

TEMPLATE = get("decode_attention_rope")

# (B, Hq, Hkv, S_max, D, dtype, cos_dtype)
CASES = [
    (1, 4, 4, 1, 16, "float32", "float32"),
    (2, 6, 2, 100, 64, "float16", "float32"),
    (1, 9, 3, 129, 64, "bfloat16", "bfloat16"),
    (1, 6, 2, 129, 128, "bfloat16", "float32"),
    (2, 9, 3, 17, 128, "float32", "float32"),
    (1, 8, 2, 256, 32, "bfloat16", "bfloat16"),
]


def _problem(B, Hq, Hkv, S_max, D, dtype, cos_dtype):
    return {"B": B, "Hq": Hq, "Hkv": Hkv, "S_max": S_max, "D": D, "dtype": dtype, "scale": D ** -0.5,
            "cos_dtype": cos_dtype}


def _inputs(problem, device, kv_len=None, seed=None):
    """make_inputs, with the history moved so that kv_len (and pos = kv_len - 1) is as given."""
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    outs, ins = TEMPLATE.make_inputs(problem, device, torch.Generator().manual_seed(seed))
    if kv_len is not None:
        gen = torch.Generator().manual_seed(seed + 1)
        kc, vc = (torch.randn(t.shape, generator=gen).to(t.dtype).to(device) for t in ins[:2])
        kc[:, :, kv_len - 1:] = float("nan")
        vc[:, :, kv_len - 1:] = float("nan")
        cos, sin = rope_tables(1, problem["D"], dtype_of(problem["cos_dtype"]), offset=kv_len - 1)
        ins = [kc, vc, *ins[2:5], cos.to(device), sin.to(device),
               torch.tensor([kv_len - 1], device=device), torch.tensor([kv_len], device=device)]
    return seed, outs, ins


def _check(problem, config, seed, outs, ins, before):
    """o against the reference; the caches against `before` (their contents at launch) with row pos
    replaced by the rotated key and the value."""
    what = f"{problem} {config} kv_len={int(ins[8].item())} seed={seed}"
    dt = dtype_of(problem["dtype"])
    assert_close(outs[0], TEMPLATE.reference(problem, ins)[0], dt, what=what)
    rk, v, pos = written_rows(problem, ins)
    for name, got, old, row in (("k_cache", ins[0], before[0], rk), ("v_cache", ins[1], before[1], v)):
        got, old = got.cpu(), old.cpu()
        assert_close(got[:, :, pos], row[:, :, 0], dt, what=f"{name} row pos {what}")
        others = torch.ones(got.shape[2], dtype=torch.bool)
        others[pos] = False
        assert torch.equal(got[:, :, others].nan_to_num(7.0), old[:, :, others].nan_to_num(7.0)), \
            f"{name}: rows other than pos changed ({what})"
        assert torch.isnan(got[:, :, pos + 1:]).all(), f"{name}: rows past pos written ({what})"


def _run(problem, config, device, kv_len=None):
    seed, outs, ins = _inputs(problem, device, kv_len)
    before = [t.clone() for t in ins[:2]]
    load_source(TEMPLATE.source(problem)).launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config)
    _check(problem, config, seed, outs, ins, before)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_default_matches_reference(case, device):
    problem = _problem(*case)
    config = TEMPLATE.default(problem, INTERPRETER)
    assert TEMPLATE.valid(config, problem, INTERPRETER)
    _run(problem, config, device)


@pytest.mark.parametrize("kv_len", [1, 2, 32, 33, 64, 65, 129])
def test_pos_on_split_edges(kv_len, device):
    """pos first or last in its split (BLOCK_S 32), or alone in it; kv_len 1: the new key is all there is."""
    problem = _problem(1, 6, 2, 129, 64, "float16", "float32")
    _run(problem, {"BLOCK_S": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}, device, kv_len=kv_len)


def test_random_valid_configs(device):
    problem = _problem(1, 9, 3, 129, 64, "bfloat16", "float32")
    configs = [c for c in TEMPLATE.space.grid() if TEMPLATE.valid(c, problem, INTERPRETER)]
    assert len(configs) > 10
    for config in random.Random().sample(configs, 5):
        _run(problem, config, device)


def test_pos_and_kv_len_change_between_identical_launches(device):
    """Same tensors, same launch, pos, kv_len and the tables rewritten in place, as in a CUDA graph replay:
    each step sees the rows the steps before it wrote."""
    problem = _problem(1, 6, 2, 40, 64, "float16", "float32")
    config = {"BLOCK_S": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    seed, outs, ins = _inputs(problem, device, kv_len=3)
    kc, vc, q, k, v, cos, sin, pos, kv_len = ins
    pos, kv_len = pos.to(torch.int32), kv_len.to(torch.int32)  # int32 works as well as int64
    mod = load_source(TEMPLATE.source(problem))
    gen = torch.Generator().manual_seed(seed)
    for n in (3, 4, 5, 17, 18):  # 5 -> 17: rows 5..15 stay NaN and lie below kv_len, so they are zeroed first
        kc[:, :, :n - 1] = kc[:, :, :n - 1].nan_to_num(0.25)
        vc[:, :, :n - 1] = vc[:, :, :n - 1].nan_to_num(-0.25)
        c, s = rope_tables(1, 64, torch.float32, offset=n - 1)
        cos.copy_(c)
        sin.copy_(s)
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, generator=gen).to(t.dtype))
        pos.fill_(n - 1)
        kv_len.fill_(n)
        outs[0].fill_(float("nan"))
        step = [kc, vc, q, k, v, cos, sin, pos, kv_len]
        before = [kc.clone(), vc.clone()]
        mod.launch(*outs, *step, **TEMPLATE.launch_kwargs(problem), **config)
        _check(problem, config, seed, outs, step, before)


def test_matches_rope_kv_then_decode_attention(device):
    """The kernels it replaces, on the same inputs: the same caches and, within rounding, the same output."""
    problem = _problem(1, 8, 2, 70, 64, "bfloat16", "bfloat16")
    seed, outs, ins = _inputs(problem, device, kv_len=50)
    kc, vc, q, k, v, cos, sin, pos, kv_len = ins
    rope_kv, attn = get("rope_kv"), get("decode_attention")
    p_rope = {"B": 1, "Hq": 8, "Hkv": 2, "T": 1, "D": 64, "S_max": 70, "dtype": "bfloat16", "cos_dtype": "bfloat16"}
    p_attn = {k_: v_ for k_, v_ in problem.items() if k_ != "cos_dtype"}
    kc2, vc2 = kc.clone(), vc.clone()
    q_rot = torch.empty((1, 8, 1, 64), dtype=torch.bfloat16, device=device)
    load_source(rope_kv.source(p_rope)).launch(q_rot, kc2, vc2, q, k, v, cos, sin, pos,
                                               **rope_kv.default(p_rope, INTERPRETER))
    o2 = torch.empty_like(outs[0])
    config = attn.default(p_attn, INTERPRETER)
    load_source(attn.source(p_attn)).launch(o2, q_rot, kc2, vc2, kv_len, **attn.launch_kwargs(p_attn), **config)
    load_source(TEMPLATE.source(problem)).launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config)
    for got, want in ((kc, kc2), (vc, vc2)):
        assert_close(got[:, :, :50].float(), want[:, :, :50].float(), torch.bfloat16, what=f"seed={seed}")
    assert_close(outs[0].float(), o2.float(), torch.bfloat16, what=f"seed={seed}")


@pytest.mark.parametrize("gpu", [INTERPRETER, H200], ids=["interpreter", "h200"])
def test_default_is_valid(gpu):
    for S_max in (1, 17, 4096):
        for D, dtype in ((16, "float32"), (64, "float16"), (128, "bfloat16")):
            for B, Hq, Hkv in ((1, 32, 8), (4, 9, 3), (1, 28, 4)):
                problem = _problem(B, Hq, Hkv, S_max, D, dtype, "float32")
                assert TEMPLATE.valid(TEMPLATE.default(problem, gpu), problem, gpu)


def test_problem_checks():
    ok = _problem(1, 32, 8, 4096, 128, "bfloat16", "float32")
    TEMPLATE.source(ok)
    for bad in ({k: v for k, v in ok.items() if k != "cos_dtype"}, {**ok, "cos_dtype": "int4"},
                {**ok, "Hq": 30}, {**ok, "extra": 1}):
        with pytest.raises((ValueError, KeyError)):
            TEMPLATE.source(bad)

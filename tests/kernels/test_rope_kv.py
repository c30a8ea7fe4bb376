"""rope_kv template: q rotated into a fresh output, k rotated and v copied into the caches at their positions
(decode T=1 and prefill shapes, grouped heads, three dtypes, cos/sin dtypes, caches that are views of larger
buffers), every other cache row left untouched, random valid configs, and agreement with the rope template
plus index_copy_ on the same tensors; with k_out the rotated k also in its own output, with bthd the fresh
outputs laid out [B, T, H, D]."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER, current_gpu
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.precision import assert_close, rel_error
from ds4c.runtime.loader import load_source

T_ = get("rope_kv")

# (B, Hq, Hkv, T, D, S_max, dtype, cos_dtype)
CASES = [
    (1, 4, 2, 1, 128, 40, "bfloat16", "bfloat16"),
    (1, 8, 2, 1, 64, 17, "float32", "float32"),
    (2, 6, 3, 7, 64, 9, "float16", "float32"),
    (1, 4, 4, 33, 128, 64, "float32", "float32"),
    (1, 5, 1, 3, 80, 8, "bfloat16", "float32"),
]


# the prefill form: (k_out, bthd) on CASES of more than one position, and odd ones
FLAG_CASES = [(c, f) for c in CASES if c[3] > 1 for f in ((True, True), (True, False), (False, True))]
FLAG_CASES += [((1, 6, 2, 19, 48, 23, "bfloat16", "float32"), (True, True)),
               ((1, 3, 3, 1, 32, 5, "float16", "float16"), (True, True))]


def _problem(B, Hq, Hkv, T, D, S, dtype, cos_dtype, k_out=None, bthd=None):
    p = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D, "S_max": S, "dtype": dtype, "cos_dtype": cos_dtype}
    return p | ({"k_out": k_out} if k_out is not None else {}) | ({"bthd": bthd} if bthd is not None else {})


def _run(problem, config, device, outs=None, seed=None):
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    made, ins = T_.make_inputs(problem, device, torch.Generator().manual_seed(seed))
    outs = outs or made
    load_source(T_.source(problem)).launch(*outs, *ins, **T_.launch_kwargs(problem), **config)
    refs = T_.reference(problem, ins)
    names = ("q_out", "k_out", "k_cache", "v_cache") if problem.get("k_out") else ("q_out", "k_cache", "v_cache")
    for name, o, r in zip(names, outs, refs, strict=True):
        assert_close(o, r, dtype_of(problem["dtype"]), what=f"{name} {problem} {config} seed={seed}")
    return outs, ins


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_default_matches_reference(case, device):
    problem = _problem(*case)
    config = T_.default(problem, current_gpu())
    assert T_.valid(config, problem, current_gpu())
    _run(problem, config, device)


@pytest.mark.parametrize("case,flags", FLAG_CASES, ids=lambda c: "-".join(map(str, c)))
def test_k_out_and_bthd_match_reference(case, flags, device):
    problem = _problem(*case, *flags)
    config = T_.default(problem, current_gpu())
    assert T_.valid(config, problem, current_gpu())
    outs, _ = _run(problem, config, device)
    B, Hq, Hkv, T, _, _, _, _ = case
    want = [(B, T, Hq) if flags[1] else (B, Hq, T)] + ([(B, T, Hkv) if flags[1] else (B, Hkv, T)] if flags[0] else [])
    assert [tuple(o.shape[:3]) for o in outs[:len(want)]] == want


def test_flags_change_only_the_fresh_outputs(device):
    """With and without k_out and bthd, the same inputs give the same caches and the same rotated q, bit for
    bit; k_out equals what landed in the k cache."""
    base = _problem(1, 4, 2, 6, 64, 16, "bfloat16", "float32")
    config = T_.default(base, current_gpu())
    plain, ins = _run(base, config, device, seed=7)
    both, _ = _run(base | {"k_out": True, "bthd": True}, config, device, seed=7)
    assert torch.equal(both[0].transpose(1, 2), plain[0])
    assert all(torch.equal(both[i][:, :, ins[5]], plain[i - 1][:, :, ins[5]]) for i in (2, 3))
    assert torch.equal(both[1].transpose(1, 2), both[2][:, :, ins[5]])


def test_a_wrong_fresh_layout_is_refused(device):
    problem = _problem(1, 4, 2, 3, 32, 8, "float32", "float32", True, True)
    outs, ins = T_.make_inputs(problem, device, torch.Generator().manual_seed(0))
    mod = load_source(T_.source(problem))
    with pytest.raises(ValueError, match="q_out"):
        mod.launch(outs[0].transpose(1, 2), *outs[1:], *ins, **T_.default(problem, current_gpu()))


def test_caches_as_views_of_larger_buffers(device):
    """The caches may be strided views (a slice of a bigger allocation); only rows at pos change."""
    problem = _problem(1, 4, 2, 3, 64, 12, "float16", "float32")
    big_k = torch.full((2, 3, 20, 64), float("nan"), dtype=torch.float16, device=device)
    big_v = torch.full((2, 3, 20, 64), float("nan"), dtype=torch.float16, device=device)
    q_out = torch.full((1, 4, 3, 64), float("nan"), dtype=torch.float16, device=device)
    kc, vc = big_k[1:, 1:, 4:16], big_v[1:, 1:, 4:16]
    _run(problem, T_.default(problem, current_gpu()), device, outs=[q_out, kc, vc])
    assert torch.isnan(big_k[0]).all() and torch.isnan(big_v[:, 0]).all() and torch.isnan(big_k[1, 1, 16:]).all()


def test_random_valid_configs(device):
    problem = _problem(1, 6, 2, 5, 32, 16, "float32", "float32")
    configs = [c for c in T_.space.grid() if T_.valid(c, problem, current_gpu())]
    assert len(configs) >= 6
    for c in random.sample(configs, 4):
        _run(problem, c, device)


def test_same_as_rope_and_index_copy(device):
    """The fused kernel equals the two-step computation it replaces in the graph."""
    problem = _problem(1, 4, 2, 5, 64, 16, "float32", "float32")
    rope = get("rope")
    outs, ins = _run(problem, T_.default(problem, current_gpu()), device)
    q, k, v, cos, sin, pos = ins
    kc = torch.zeros(1, 2, 16, 64, device=device)
    vc = torch.zeros(1, 2, 16, 64, device=device)
    rq = torch.empty(1, 4, 5, 64, device=device)
    rk = torch.empty(1, 2, 5, 64, device=device)
    for x, y in ((q, rq), (k, rk)):
        p = {"B": 1, "H": x.shape[1], "T": 5, "D": 64, "dtype": "float32", "cos_dtype": "float32"}
        load_source(rope.source(p)).launch(y, x, cos, sin, **rope.default(p, current_gpu()))
    kc.index_copy_(2, pos, rk)
    vc.index_copy_(2, pos, v)
    assert torch.equal(outs[0], rq)
    assert torch.equal(outs[1][:, :, pos], kc[:, :, pos]) and torch.equal(outs[2][:, :, pos], vc[:, :, pos])


def test_a_stray_write_is_caught():
    """rel_error: a value where the reference says "untouched" (NaN) fails, as does NaN where one belongs."""
    ref = torch.tensor([1.0, float("nan"), 3.0])
    assert rel_error(torch.tensor([1.0, float("nan"), 3.0]), ref) == 0.0
    assert rel_error(torch.tensor([1.0, 2.0, 3.0]), ref) == float("inf")
    assert rel_error(torch.tensor([float("nan"), float("nan"), 3.0]), ref) == float("inf")


def test_problem_checks_and_default_validity():
    with pytest.raises(ValueError):
        T_.source(_problem(1, 4, 2, 1, 63, 8, "float32", "float32"))  # odd head dim
    with pytest.raises(ValueError):
        T_.source(_problem(1, 4, 2, 9, 64, 8, "float32", "float32"))  # more positions than the cache
    for gpu in (H200, INTERPRETER):
        for case in CASES + [(1, 32, 8, 2048, 128, 4096, "bfloat16", "bfloat16"),
                             (1, 32, 8, 1, 128, 4096, "bfloat16", "bfloat16")]:
            for flags in ((), (True, True)):
                p = _problem(*case, *flags)
                assert T_.valid(T_.default(p, gpu), p, gpu)
    with pytest.raises(ValueError, match="optionally"):
        T_.source(_problem(1, 4, 2, 1, 64, 8, "float32", "float32") | {"bthd_typo": True})

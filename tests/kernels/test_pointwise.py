"""pointwise template: broadcasting patterns (row vector, column vector, scalar, transposed, strided slice),
ranks 0..6, several expressions and dtypes, poisoned outputs, fresh random inputs, random valid configs,
stride checks in the wrapper, and the default config's validity."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.kernel_templates.pointwise import collapse
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

TEMPLATE = get("pointwise")

SILU_MUL = ["mul", ["silu", "x0"], "x1"]
GELU_TANH = ["gelu_tanh", "x0"]
ADD_CAST = ["cast", ["add", "x0", "x1"], "bfloat16"]
POW2 = ["mul", ["pow", "x0", 2], "x1"]
RSQRT = ["mul", "x0", ["rsqrt", ["add", ["pow", "x1", 2], 0.5]]]
SUB = ["sub", "x0", ["mul", "x1", 3.0]]


def _contig(shape):
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= n
    return list(reversed(st))


def _problem(shape, dtype, inputs, expr):
    return {"shape": list(shape), "dtype": dtype, "expr": expr,
            "inputs": [{"dtype": d, "strides": list(s)} for d, s in inputs]}


# id -> problem
CASES = {
    "silu_mul_bf16": _problem([3, 100], "bfloat16", [("bfloat16", [100, 1])] * 2, SILU_MUL),
    "gelu_tanh_fp16": _problem([129, 7], "float16", [("float16", [7, 1])], GELU_TANH),
    "add_cast_row_vector": _problem([5, 577], "float32", [("bfloat16", [577, 1]), ("float32", [0, 1])],
                                    ADD_CAST),
    "pow2_column_vector": _problem([17, 33], "float32", [("float32", [33, 1]), ("float32", [1, 0])], POW2),
    "rsqrt_scalar": _problem([1, 1539], "bfloat16", [("bfloat16", [1539, 1]), ("float32", [0, 0])], RSQRT),
    "transposed": _problem([33, 65], "float16", [("float16", [1, 33]), ("float16", [65, 1])], SUB),
    "strided_slice": _problem([4, 6], "float32", [("float32", [12, 2]), ("float16", [0, 1])], SILU_MUL),
    "rank0": _problem([], "float32", [("float32", [])], ["exp", "x0"]),
    "rank1_one": _problem([1], "float16", [("float16", [1]), ("float16", [0])], SILU_MUL),
    "rank6": _problem([2, 1, 3, 2, 5, 3], "float32",
                      [("float32", _contig([2, 1, 3, 2, 5, 3])), ("bfloat16", [0, 0, 1, 0, 3, 15])], SUB),
    "rank6_bcast": _problem([2, 3, 1, 4, 2, 3], "bfloat16",
                            [("bfloat16", [0, 24, 0, 6, 3, 1]), ("float32", [3, 0, 0, 0, 0, 0])], POW2),
    "constant": _problem([4, 5], "float32", [], 1.5),
}


def _tolerance_dtype(problem) -> torch.dtype:
    """The output dtype, or a narrower float the expression rounds through (a cast bounds the precision)."""
    order = ["bfloat16", "float16", "float32"]
    names = [problem["dtype"]]

    def walk(e):
        if isinstance(e, list):
            if e[0] == "cast":
                names.append(e[2])
            for a in e[1:]:
                walk(a)

    walk(problem["expr"])
    return dtype_of(min(names, key=order.index))


def _run(problem, config, device):
    seed = random.SystemRandom().randrange(2**31)
    outs, ins = TEMPLATE.make_inputs(problem, device, torch.Generator().manual_seed(seed))
    assert torch.isnan(outs[0]).all()
    mod = load_source(TEMPLATE.source(problem))
    mod.launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config)
    ref = TEMPLATE.reference(problem, ins)[0]
    assert_close(outs[0], ref, _tolerance_dtype(problem), what=f"{problem} {config} seed={seed}")


@pytest.mark.parametrize("name", CASES)
def test_default_matches_reference(name, device):
    problem = CASES[name]
    config = TEMPLATE.default(problem, INTERPRETER)
    assert TEMPLATE.valid(config, problem, INTERPRETER)
    _run(problem, config, device)


@pytest.mark.parametrize("p", [3, 4, -2, -3, 5, 6, 7, -5, 0, 1.5, 0.25])
def test_powers_of_negative_and_zero_bases(p, device):
    """pow as torch computes it: a negative base keeps the sign of an odd integer power (GPT-2's tanh GELU
    spells x ** 3 this way), gives NaN for a fractional one, a zero base gives 0 for p > 0, and x ** 0 is 1."""
    signed = _problem([9, 37], "float32", [("float32", [37, 1])], ["pow", "x0", p])
    _run(signed, TEMPLATE.default(signed, INTERPRETER), device)
    if p > 0:  # half the bases exactly zero
        zeros = _problem([9, 37], "float32", [("float32", [37, 1])], ["pow", ["maximum", "x0", -0.0], p])
        _run(zeros, TEMPLATE.default(zeros, INTERPRETER), device)


@pytest.mark.parametrize("name", ["silu_mul_bf16", "add_cast_row_vector", "transposed", "rank6_bcast"])
def test_random_valid_configs(name, device):
    problem = CASES[name]
    configs = [c for c in TEMPLATE.space.grid() if TEMPLATE.valid(c, problem, INTERPRETER)]
    assert configs
    for config in random.sample(configs, min(3, len(configs))):
        _run(problem, config, device)


@pytest.mark.parametrize("name", CASES)
def test_default_valid_on_h200(name):
    problem = CASES[name]
    assert TEMPLATE.valid(TEMPLATE.default(problem, H200), problem, H200)


def test_large_default_fills_the_gpu():
    problem = _problem([2048, 14336], "bfloat16", [("bfloat16", [14336, 1])] * 2, SILU_MUL)
    assert TEMPLATE.default(problem, H200) == {"BLOCK": 1024, "num_warps": 4}
    flops, nbytes = TEMPLATE.cost(problem)
    assert nbytes == 3 * 2048 * 14336 * 2 and flops > 0


def test_collapse_merges_contiguous_and_broadcast_dims():
    assert collapse([4, 5, 6], [_contig([4, 5, 6])]) == ([120], [[1]])
    assert collapse([4, 5, 6], [[30, 6, 1], [0, 0, 1]]) == ([20, 6], [[6, 1], [0, 1]])
    assert collapse([4, 1, 6], [[6, 99, 1], [0, 7, 0]]) == ([24], [[1], [0]])
    assert collapse([4, 1, 6], [[6, 99, 1], [1, 7, 0]]) == ([4, 6], [[6, 1], [1, 0]])
    assert collapse([], []) == ([1], [])
    assert collapse([3, 5], [[1, 3]]) == ([3, 5], [[1, 3]])


def test_wrapper_rejects_wrong_strides(device):
    problem = CASES["silu_mul_bf16"]
    outs, ins = TEMPLATE.make_inputs(problem, device, torch.Generator().manual_seed(0))
    mod = load_source(TEMPLATE.source(problem))
    with pytest.raises(ValueError):
        mod.launch(*outs, ins[0].t().contiguous().t(), ins[1], BLOCK=128, num_warps=1)
    with pytest.raises(ValueError):
        mod.launch(*outs, ins[0].float(), ins[1], BLOCK=128, num_warps=1)


def test_source_is_specialised_on_strides():
    a = TEMPLATE.source(CASES["silu_mul_bf16"])
    b = TEMPLATE.source(_problem([3, 100], "bfloat16", [("bfloat16", [100, 1]), ("bfloat16", [0, 1])],
                                 SILU_MUL))
    assert a != b and "idx % 100" in b and "idx %" not in a


def test_int64_indexing_only_past_int32():
    big = _problem([65536, 32768 + 1], "bfloat16", [("bfloat16", [32769, 1])], GELU_TANH)
    assert "tl.int64" in TEMPLATE.source(big)
    assert "tl.int64" not in TEMPLATE.source(CASES["silu_mul_bf16"])

"""rmsnorm template: odd rows and cols, three dtypes, weight dtypes, with and without the residual add (h
checked too), strided and contiguous inputs, the one-pass and looped paths, poisoned outputs, random valid
configs, and the default config's validity."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

TEMPLATE = get("rmsnorm")

# (rows, cols, dtype, w_dtype, residual)
CASES = [
    (1, 1, "float32", "float32", False),
    (3, 7, "float16", "float16", True),
    (129, 100, "bfloat16", "bfloat16", True),
    (3, 577, "bfloat16", "float32", False),
    (1, 1539, "float16", "float32", True),
    (3, 1536 + 3, "float32", "float32", False),
    (129, 1, "bfloat16", "bfloat16", True),
]
LOOPED = {"ROWS": 2, "BLOCK": 512, "num_warps": 4}  # three chunks of a 1539-wide row


def _problem(rows, cols, dtype, w_dtype, residual):
    return {"rows": rows, "cols": cols, "dtype": dtype, "w_dtype": w_dtype, "eps": 1e-5, "residual": residual}


def _run(problem, config, device, contiguous=False):
    seed = random.SystemRandom().randrange(2**31)
    outs, ins = TEMPLATE.make_inputs(problem, device, torch.Generator().manual_seed(seed))
    assert all(torch.isnan(o).all() for o in outs)
    if contiguous:
        ins = [x.contiguous() for x in ins]
    mod = load_source(TEMPLATE.source(problem))
    mod.launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config)
    refs = TEMPLATE.reference(problem, ins)
    assert len(refs) == len(outs) == (2 if problem["residual"] else 1)
    for name, out, ref in zip("yh"[: len(outs)], outs, refs, strict=True):
        assert_close(out, ref, dtype_of(problem["dtype"]), what=f"{name} {problem} {config} seed={seed}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_default_matches_reference(case, device):
    problem = _problem(*case)
    config = TEMPLATE.default(problem, INTERPRETER)
    assert TEMPLATE.valid(config, problem, INTERPRETER)
    _run(problem, config, device)


@pytest.mark.parametrize("residual", [False, True])
def test_looped_two_pass(residual, device):
    problem = _problem(3, 1539, "bfloat16", "float32", residual)
    assert TEMPLATE.valid(LOOPED, problem, INTERPRETER)
    _run(problem, LOOPED, device)


def test_contiguous_inputs(device):
    problem = _problem(5, 100, "float16", "float16", True)
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device, contiguous=True)


@pytest.mark.parametrize("case", [CASES[2], CASES[5]], ids=lambda c: "-".join(map(str, c)))
def test_random_valid_configs(case, device):
    problem = _problem(*case)
    configs = [c for c in TEMPLATE.space.grid() if TEMPLATE.valid(c, problem, INTERPRETER)]
    assert configs
    for config in random.sample(configs, min(3, len(configs))):
        _run(problem, config, device)


@pytest.mark.parametrize("rows,cols", [(1, 4096), (2048, 4096), (8192, 1), (4, 14336), (3, 577)])
def test_default_valid_on_h200(rows, cols):
    problem = _problem(rows, cols, "bfloat16", "bfloat16", True)
    config = TEMPLATE.default(problem, H200)
    assert TEMPLATE.valid(config, problem, H200)
    if cols <= 8192:
        assert config["BLOCK"] >= cols  # one pass


def test_cost_counts_residual_stream():
    flops, nbytes = TEMPLATE.cost(_problem(2048, 4096, "bfloat16", "bfloat16", True))
    assert nbytes == 4 * 2048 * 4096 * 2 + 4096 * 2 and flops > 0

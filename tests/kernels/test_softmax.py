"""softmax template: odd rows and cols, three dtypes, scales, strided and contiguous inputs, the one-pass
and online looped paths, poisoned outputs, random valid configs, and the default config's validity."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

TEMPLATE = get("softmax")

# (rows, cols, dtype, scale)
CASES = [
    (1, 1, "float32", 1.0),
    (3, 7, "float16", 0.125),
    (129, 100, "bfloat16", 0.088),
    (3, 577, "float16", 1.0),
    (1, 1539, "bfloat16", 0.5),
    (3, 1536 + 3, "float32", -0.7),
]
LOOPED = {"ROWS": 2, "BLOCK": 256, "num_warps": 2}


def _problem(rows, cols, dtype, scale):
    return {"rows": rows, "cols": cols, "dtype": dtype, "scale": scale}


def _run(problem, config, device, contiguous=False):
    seed = random.SystemRandom().randrange(2**31)
    outs, ins = TEMPLATE.make_inputs(problem, device, torch.Generator().manual_seed(seed))
    assert torch.isnan(outs[0]).all()
    if contiguous:
        ins = [x.contiguous() for x in ins]
    mod = load_source(TEMPLATE.source(problem))
    mod.launch(*outs, *ins, **TEMPLATE.launch_kwargs(problem), **config)
    ref = TEMPLATE.reference(problem, ins)[0]
    assert_close(outs[0], ref, dtype_of(problem["dtype"]), what=f"{problem} {config} seed={seed}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_default_matches_reference(case, device):
    problem = _problem(*case)
    config = TEMPLATE.default(problem, INTERPRETER)
    assert TEMPLATE.valid(config, problem, INTERPRETER)
    _run(problem, config, device)


@pytest.mark.parametrize("case", [(3, 1539, "bfloat16", 0.3), (5, 1025, "float32", 2.0)],
                         ids=lambda c: "-".join(map(str, c)))
def test_looped_online_pass(case, device):
    problem = _problem(*case)
    assert TEMPLATE.valid(LOOPED, problem, INTERPRETER)
    _run(problem, LOOPED, device)


def test_contiguous_input(device):
    problem = _problem(4, 33, "float16", 1.0)
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device, contiguous=True)


@pytest.mark.parametrize("case", [CASES[2], CASES[5]], ids=lambda c: "-".join(map(str, c)))
def test_random_valid_configs(case, device):
    problem = _problem(*case)
    configs = [c for c in TEMPLATE.space.grid() if TEMPLATE.valid(c, problem, INTERPRETER)]
    assert configs
    for config in random.sample(configs, min(3, len(configs))):
        _run(problem, config, device)


@pytest.mark.parametrize("rows,cols", [(32 * 2048, 2048), (1, 1), (3, 577), (4, 32768)])
def test_default_valid_on_h200(rows, cols):
    problem = _problem(rows, cols, "bfloat16", 0.088)
    assert TEMPLATE.valid(TEMPLATE.default(problem, H200), problem, H200)

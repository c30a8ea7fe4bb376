"""rope template: decode (T=1) and prefill shapes, odd T and head counts, head dims 64/80/128, three dtypes,
cos/sin dtypes, transposed and contiguous x, poisoned outputs, random valid configs, the default config's
validity, and agreement with the Hugging Face formula written out on the tensors."""

from __future__ import annotations

import random

import pytest
import torch

from ds4c.device import H200, INTERPRETER
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.kernel_templates.rope import rope_tables
from ds4c.precision import assert_close
from ds4c.runtime.loader import load_source

TEMPLATE = get("rope")

# (B, H, T, D, dtype, cos_dtype)
CASES = [
    (1, 4, 1, 128, "bfloat16", "bfloat16"),
    (2, 3, 7, 64, "float16", "float32"),
    (1, 2, 33, 128, "float32", "float32"),
    (1, 5, 3, 80, "bfloat16", "float32"),
    (3, 1, 129, 16, "float16", "float16"),
]


def _problem(B, H, T, D, dtype, cos_dtype):
    return {"B": B, "H": H, "T": T, "D": D, "dtype": dtype, "cos_dtype": cos_dtype}


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
    return outs, ins


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_default_matches_reference(case, device):
    problem = _problem(*case)
    config = TEMPLATE.default(problem, INTERPRETER)
    assert TEMPLATE.valid(config, problem, INTERPRETER)
    _run(problem, config, device)


def test_contiguous_x(device):
    problem = _problem(2, 3, 5, 64, "float16", "float16")
    _run(problem, TEMPLATE.default(problem, INTERPRETER), device, contiguous=True)


def test_matches_hugging_face_formula(device):
    """The reference itself, checked against apply_rotary_pos_emb as Hugging Face writes it."""
    problem = _problem(1, 2, 9, 64, "float32", "float32")
    (y,), (x, cos, sin) = _run(problem, TEMPLATE.default(problem, INTERPRETER), device)
    x1, x2 = x[..., :32], x[..., 32:]
    hf = x * cos[None, None] + torch.cat((-x2, x1), dim=-1) * sin[None, None]
    assert_close(y, hf, torch.float32, what="vs HF formula")
    c, s = rope_tables(4, 8, torch.float64)
    assert torch.allclose(c[:, :4], c[:, 4:]) and torch.allclose(c**2 + s**2, torch.ones_like(c))


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=lambda c: "-".join(map(str, c)))
def test_random_valid_configs(case, device):
    problem = _problem(*case)
    configs = [c for c in TEMPLATE.space.grid() if TEMPLATE.valid(c, problem, INTERPRETER)]
    assert configs
    for config in random.sample(configs, min(3, len(configs))):
        _run(problem, config, device)


@pytest.mark.parametrize("B,H,T", [(1, 32, 2048), (1, 8, 2048), (1, 32, 1), (4, 32, 1), (1, 1, 3)])
def test_default_valid_on_h200(B, H, T):
    problem = _problem(B, H, T, 128, "bfloat16", "bfloat16")
    assert TEMPLATE.valid(TEMPLATE.default(problem, H200), problem, H200)


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError):
        TEMPLATE.source(_problem(1, 1, 1, 7, "float32", "float32"))

"""Key stability: sorted JSON over the key fields, independent of dict order, sensitive to every field."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from vecadd_template import VECADD

from ds4c.device import H200, INTERPRETER
from ds4c.tuning_db.key import KeyFields, key_fields, tuning_key

problems = st.dictionaries(st.text("abcdefgMNKT_", min_size=1, max_size=6),
                           st.one_of(st.integers(-2**40, 2**40), st.sampled_from(["bfloat16", "float32"]),
                                     st.booleans()), min_size=1, max_size=8)


def _fields(problem: dict, **over) -> KeyFields:
    base = dict(schema=1, template="matmul", source_hash="0123456789abcdef", problem=problem,
                gpu="NVIDIA H200", capability=(9, 0), torch="2.11.0", triton="3.6.0")
    return KeyFields(**{**base, **over})


def _changed(problem: dict, field: str, value) -> KeyFields:
    return _fields(value, **{}) if field == "problem" else _fields(problem, **{field: value})


@settings(max_examples=60, deadline=None)
@given(problems, st.randoms())
def test_key_is_independent_of_dict_order(problem, rnd):
    items = list(problem.items())
    rnd.shuffle(items)
    assert _fields(problem).key == _fields(dict(items)).key
    assert len(_fields(problem).key) == 64


@settings(max_examples=60, deadline=None)
@given(problems, st.sampled_from(["schema", "template", "source_hash", "problem", "gpu", "capability",
                                  "torch", "triton"]))
def test_key_changes_with_any_field(problem, field):
    base = _fields(problem)
    changed = {"schema": 2, "template": "gemv", "source_hash": "fedcba9876543210",
               "problem": {**problem, "extra_hole": 1}, "gpu": "NVIDIA H100", "capability": (8, 0),
               "torch": "2.12.0", "triton": "3.7.0"}[field]
    assert _changed(problem, field, changed).key != base.key


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_problem_values_change_the_key(n, m):
    a = tuning_key(VECADD, {"n": n, "dtype": "float32"}, INTERPRETER)
    b = tuning_key(VECADD, {"dtype": "float32", "n": m}, INTERPRETER)
    assert (a == b) == (n == m)


def test_fields_round_trip_and_gpu_and_template_text_matter():
    p = {"n": 5, "dtype": "float32"}
    f = key_fields(VECADD, p, INTERPRETER)
    assert KeyFields.from_json(f.to_json()) == f
    other_gpu = H200
    assert key_fields(VECADD, p, other_gpu).key != f.key
    # the scale hole changes the rendered source, so its hash and the key
    assert key_fields(VECADD, {**p, "scale": 2.0}, INTERPRETER).source_hash != f.source_hash


def test_key_is_not_python_hash():
    f = key_fields(VECADD, {"n": random.randint(1, 100), "dtype": "float32"}, INTERPRETER)
    assert f.key == KeyFields.from_json(f.to_json()).key  # recomputed from data alone


def test_a_token_dimension_may_index_a_list_valued_key():
    """Pointwise problems carry their rows as shape[0]: a lookup borrows across it, and only across it."""
    from ds4c.kernel_templates import get
    from ds4c.tuning_db.key import token_count, without_token_dim

    pw = get("pointwise")
    p = {"shape": [64, 16], "dtype": "bfloat16", "inputs": [{"dtype": "float32", "strides": [16, 1]}],
         "expr": ["cast", "x0", "bfloat16"]}
    assert token_count(pw, p) == 64
    rest = without_token_dim(pw, p)
    assert rest == without_token_dim(pw, {**p, "shape": [7, 16]}) != without_token_dim(pw, {**p, "shape": [64, 8]})
    assert p["shape"] == [64, 16]  # the problem itself is left alone
    assert token_count(pw, {**p, "shape": []}) is None

"""runtime/weights.py: derived weights by recipe, and base weights handed out as views of a concatenation."""

import pytest
import torch

from ds4c.precision import QUANT_GROUP
from ds4c.runtime.weights import concat_views, derive, quantize


def _recipe(op, of, shape, out="float32", **params):
    return {"op": op, "of": of, "params": params, "shape": shape, "dtype": out}


def test_parts_of_one_concatenation_become_views():
    base = {"q": torch.randn(4, 3), "k": torch.randn(2, 3), "v": torch.randn(2, 3), "o": torch.randn(3, 3)}
    recipes = {"cat(q,k,v)": _recipe("cat", ["q", "k", "v"], [8, 3])}
    done = derive(recipes, base)
    views = concat_views(recipes, base, done)
    assert sorted(views) == ["k", "q", "v"]
    cat = done["cat(q,k,v)"]
    for name, t in views.items():
        assert torch.equal(t, base[name]) and t.untyped_storage().data_ptr() == cat.untyped_storage().data_ptr()


def test_weights_in_two_recipes_or_of_another_dtype_stay():
    base = {"a": torch.randn(4, 3), "b": torch.randn(2, 3), "c": torch.randn(2, 3)}
    recipes = {"cat(a,b)": _recipe("cat", ["a", "b"], [6, 3]),
               "quant(a;dtype=int8,part=values)": _recipe("quant", ["a"], [4, 3], "int8", dtype="int8",
                                                            part="values"),
               "quant(a;dtype=int8,part=scale)": _recipe("quant", ["a"], [4, 1], dtype="int8", part="scale"),
               "cat(b,c)": _recipe("cat", ["b", "c"], [4, 3])}
    views = concat_views(recipes, base, derive(recipes, base))
    assert sorted(views) == ["c"]  # a is quantised too, b is in two concatenations


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn"])
def test_quantize_takes_one_scale_per_group(dtype):
    """Each group of QUANT_GROUP weights of a row (the last one short) gets its own absmax scale, so a group
    of large weights leaves the precision of its neighbours alone."""
    G = QUANT_GROUP
    w = torch.randn(5, 2 * G + 22)
    w[2, G:2 * G] *= 1000.0
    values, scale = quantize(w, dtype)
    assert values.shape == w.shape and str(values.dtype) == f"torch.{dtype}"
    assert scale.shape == (5, 3) and scale.dtype == torch.float32
    per_weight = scale.repeat_interleave(G, dim=1)[:, :w.shape[1]]
    back = values.float() * per_weight
    qmax = 127.0 if dtype == "int8" else 448.0
    assert torch.allclose(values.float().abs().amax(dim=1), torch.full((5,), qmax))
    if dtype == "int8":  # half a step of the group's scale
        bound = 0.5 * per_weight
    else:  # half an ulp of e4m3 (3 mantissa bits), or of its smallest subnormal step 2^-9
        bound = w.abs() / 16 + per_weight * 2.0**-10
    assert ((back - w).abs() <= bound * (1 + 1e-5)).all()
    # the 1000x group's scale against its neighbours': 1000 x the ratio of two groups' absmax of normal
    # samples, which can fall to ~0.4 (456x was seen); one scale per row would give 1x
    assert (scale[2, 1] > 100 * scale[2, 0]) and (scale[2, 1] > 100 * scale[2, 2])

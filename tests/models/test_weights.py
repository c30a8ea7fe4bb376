"""runtime/weights.py: derived weights by recipe, and base weights handed out as views of a concatenation."""

import torch

from ds4c.runtime.weights import concat_views, derive


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
               "quant(a;dtype=int8,part=scale)": _recipe("quant", ["a"], [4], dtype="int8", part="scale"),
               "cat(b,c)": _recipe("cat", ["b", "c"], [4, 3])}
    views = concat_views(recipes, base, derive(recipes, base))
    assert sorted(views) == ["c"]  # a is quantised too, b is in two concatenations

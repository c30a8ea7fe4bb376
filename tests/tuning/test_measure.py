"""measure(): candidates of one problem share one set of inputs and one reference, and a wrong candidate is
still caught when its inputs come from that cache."""

from __future__ import annotations

import dataclasses

from vecadd_template import VECADD

from ds4c.device import INTERPRETER, default_device
from ds4c.tuning_db.measure import measure

PROBLEM = {"n": 1000, "dtype": "float32"}


def _counting(template):
    calls = {"inputs": 0, "reference": 0}

    def make_inputs(p, device, gen):
        calls["inputs"] += 1
        return template.make_inputs(p, device, gen)

    def reference(p, ins):
        calls["reference"] += 1
        return template.reference(p, ins)

    return dataclasses.replace(template, make_inputs=make_inputs, reference=reference), calls


def test_inputs_and_reference_are_made_once_per_problem():
    t, calls = _counting(VECADD)
    good = {"BLOCK": 64, "TAIL": 1, "num_warps": 1}
    assert measure(t, PROBLEM, good, INTERPRETER).ok
    first = dict(calls)
    assert measure(t, PROBLEM, {**good, "BLOCK": 128}, INTERPRETER).ok
    assert calls == first and calls["reference"] == 1
    # the interpreter times one input set; a GPU also makes the sets it rotates over (a problem inside L2)
    assert calls["inputs"] == 1 or default_device().type == "cuda"
    # a candidate that leaves the tail unwritten fails against the cached reference (poisoned outputs)
    bad = measure(t, PROBLEM, {**good, "TAIL": 0}, INTERPRETER)
    assert not bad.ok and bad.reason.startswith("wrong")
    assert measure(t, PROBLEM, good, INTERPRETER).ok  # and the cache still holds correct inputs
    # a new problem or seed makes new inputs
    assert measure(t, {"n": 777, "dtype": "float32"}, good, INTERPRETER).ok
    assert measure(t, {"n": 777, "dtype": "float32"}, good, INTERPRETER, seed=1).ok
    assert calls == {"inputs": 3 * first["inputs"], "reference": 3}

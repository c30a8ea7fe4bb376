"""assign_precision: every kernel gets its op class; "mixed" stores the FFN and output-head weights as int8
with scales per group of weights (derived at load time) and stays within the int8 tolerance; "bf16" quantizes
nothing."""

import pytest
import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, run, stats, upto

from ds4c.ir import op_of
from ds4c.passes.precision import assign_precision


def _mlp(m, x):
    return F.linear(F.silu(F.linear(x, m.wg)) * F.linear(x, m.wu), m.wd) + F.linear(x, m.wo)


def _module():
    return Fn(_mlp, wg=torch.randn(40, 48) * 0.2, wu=torch.randn(40, 48) * 0.2, wd=torch.randn(48, 40) * 0.2,
              wo=torch.randn(48, 48) * 0.2)


def test_mixed_quantizes_ffn_weights_to_int8(device):
    mod = _module()
    g, state = capture(mod, (torch.randn(1, 9, 48),))
    h = run(g, upto("assign_precision", "mixed"))
    assert stats(h)["assign_precision.int8"] == 2  # the dual gate/up matmul and the down projection
    mms = [op_of(h, n) for n in h if op_of(h, n).target == "kernel:matmul"]
    assert sorted(op.precision for op in mms) == ["attn_matmul", "ffn_matmul", "ffn_matmul"]
    assert sorted(op.problem["w_dtype"] for op in mms) == ["int8", "int8", "same"]
    parts = sorted((d["op"], d["params"].get("part")) for d in h.graph["derived"].values())
    assert parts == [("quant", "scale")] * 3 + [("quant", "values")] * 3
    check_numbers(h, state, mod, (torch.randn(1, 9, 48),), device, dtype=torch.int8)


def _head(m, x):
    h = F.linear(F.silu(F.linear(x, m.wg)) * F.linear(x, m.wu), m.wd) + F.linear(x, m.wo)
    return F.linear(h, m.head).view(-1)  # logits reach the output through a view


def test_mixed_quantizes_the_head_seen_through_views(device):
    mod = Fn(_head, wg=torch.randn(40, 48) * 0.2, wu=torch.randn(40, 48) * 0.2, wd=torch.randn(48, 40) * 0.2,
             wo=torch.randn(48, 48) * 0.2, head=torch.randn(72, 48) * 0.2)
    g, state = capture(mod, (torch.randn(1, 1, 48),))
    h = run(g, upto("assign_precision", "mixed"))
    mms = [op_of(h, n) for n in h if op_of(h, n).target in ("kernel:matmul", "kernel:gemv")]
    labels = sorted((op.problem["N"], op.precision, op.problem["w_dtype"]) for op in mms)
    assert labels == [(40, "ffn_matmul", "int8"), (48, "attn_matmul", "same"), (48, "ffn_matmul", "int8"),
                      (72, "lm_head", "int8")]
    assert stats(h)["assign_precision.int8"] == 3
    check_numbers(h, state, mod, (torch.randn(1, 1, 48),), device, dtype=torch.int8)


def test_bf16_mode_only_labels():
    g, _ = capture(_module(), (torch.randn(1, 9, 48),))
    h = run(g, upto("assign_precision", "bf16"))
    assert not any(k.startswith("assign_precision") for k in stats(h))
    assert all(op_of(h, n).precision is not None for n in h if op_of(h, n).is_kernel)
    assert all(op_of(h, n).problem["w_dtype"] == "same" for n in h if op_of(h, n).target == "kernel:matmul")


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="unknown precision mode"):
        assign_precision("int3")

"""select_gemv: matmuls of at most 16 rows run on the gemv template (same problem); taller ones stay."""

import pytest
import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, kernels, run, stats, upto


@pytest.mark.parametrize("rows,expect", [(1, "gemv"), (16, "gemv"), (17, "matmul")])
def test_gemv_for_few_rows(rows, expect, device):
    mod = Fn(lambda m, x: F.linear(x, m.w), w=torch.randn(40, 48) * 0.2)
    g, state = capture(mod, (torch.randn(rows, 48),))
    h = run(g, upto("select_gemv"))
    assert kernels(h) == [expect]
    assert stats(h).get("select_gemv", 0) == (1 if expect == "gemv" else 0)
    check_numbers(h, state, mod, (torch.randn(rows, 48),), device)

"""fuse_rope: x * cos + rotate_half(x) * sin -> one rope kernel, for the chunk and the slice spellings of
rotate_half; other rotations stay pointwise."""

import pytest
import torch
from pass_helpers import Fn, capture, check_numbers, in_fp32, kernels, run, stats, targets, upto


def _chunk(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _slice(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def _wrong_sign(x):  # cat(x2, -x1): a different rotation
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, -x1), dim=-1)


def _rope(rot):
    return lambda m, x, cos, sin: x * cos + rot(x) * sin


@pytest.mark.parametrize("rot", [_chunk, _slice])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_fused(rot, dtype, device):
    mod = Fn(_rope(rot), w=torch.randn(1))

    def args():
        return torch.randn(1, 3, 7, 16, dtype=dtype), torch.randn(7, 16, dtype=dtype), torch.randn(7, 16, dtype=dtype)

    g, state = capture(mod, args())
    h = run(g, upto("fuse_rope"))
    assert stats(h)["fuse_rope"] == 1
    assert targets(h) == ["kernel:rope"]
    check_numbers(h, state, in_fp32(mod), args(), device, dtype=dtype)


def test_other_rotation_not_rope(device):
    mod = Fn(_rope(_wrong_sign), w=torch.randn(1))
    args = (torch.randn(1, 3, 7, 16), torch.randn(7, 16), torch.randn(7, 16))
    g, state = capture(mod, args)
    h = run(g, upto("fuse_rope"))
    assert "fuse_rope" not in stats(h) and kernels(h) == []
    check_numbers(h, state, mod, args, device)

"""fuse_rmsnorm (and fuse_softmax): the decomposed Llama RMSNorm -> one rmsnorm kernel, in fp32 and in the
Hugging Face bf16 spelling with casts around the fp32 statistics; near-misses stay on ATen."""

import pytest
import torch
import torch.nn.functional as F
from pass_helpers import Fn, capture, check_numbers, count, in_fp32, kernels, run, stats, targets, upto

from ds4c.passes.norms import fuse_softmax


def _rms(m, x):
    return m.w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rms_hf(m, x):  # HF Llama: statistics in fp32, cast back, weight multiply in the model dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return m.w * h.to(x.dtype)


@pytest.mark.parametrize("fn,dtype", [(_rms, torch.float32), (_rms_hf, torch.bfloat16), (_rms_hf, torch.float32)])
def test_rmsnorm_fused(fn, dtype, device):
    mod = Fn(fn, w=(1 + 0.1 * torch.randn(48)).to(dtype))
    g, state = capture(mod, (torch.randn(2, 7, 48, dtype=dtype),))
    h = run(g, upto("fuse_rmsnorm"))
    assert stats(h)["fuse_rmsnorm"] == 1
    assert targets(h) == ["kernel:rmsnorm"]
    p = h.nodes[next(n for n in h if h.nodes[n]["op"].target == "kernel:rmsnorm")]["op"].problem
    assert (p["rows"], p["cols"], p["dtype"]) == (14, 48, str(dtype).removeprefix("torch."))
    x = torch.randn(2, 7, 48, dtype=dtype)
    check_numbers(h, state, in_fp32(mod), (x,), device, dtype=dtype)


def _mean_dim0(m, x):
    return m.w * (x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-6))


def _no_eps(m, x):
    return m.w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)))


def _fourth_power(m, x):
    return m.w * (x * torch.rsqrt(x.pow(4).mean(-1, keepdim=True) + 1e-6))


def _other_input(m, x):  # the normalised tensor differs from the one whose statistics are taken
    return m.w * ((x + 1) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


@pytest.mark.parametrize("fn", [_mean_dim0, _no_eps, _fourth_power, _other_input])
def test_near_misses_stay_aten(fn, device):
    mod = Fn(fn, w=torch.randn(48))
    g, state = capture(mod, (torch.randn(7, 48),))
    h = run(g, upto("fuse_rmsnorm"))
    assert "fuse_rmsnorm" not in stats(h)
    assert "kernel:rmsnorm" not in targets(h) and count(h, "aten.rsqrt.default") == 1
    check_numbers(h, state, mod, (torch.randn(7, 48),), device)


def test_statistics_read_elsewhere_stay_aten():
    def fn(m, x):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return m.w * (x * r), r  # the rsqrt is also an output
    g, _ = capture(Fn(fn, w=torch.randn(48)), (torch.randn(7, 48),))
    h = run(g, upto("fuse_rmsnorm"))
    assert "fuse_rmsnorm" not in stats(h) and kernels(h) == []


def test_softmax_fused_only_over_last_dim(device):
    mod = Fn(lambda m, x: (F.softmax(x, dim=-1), F.softmax(x, dim=0)), w=torch.randn(1))
    g, state = capture(mod, (torch.randn(7, 48),))
    h = run(g, upto("fuse_rmsnorm") + [fuse_softmax])
    assert stats(h)["fuse_softmax"] == 1
    assert targets(h) == ["kernel:softmax", "aten.softmax.int"]
    check_numbers(h, state, mod, (torch.randn(7, 48),), device)

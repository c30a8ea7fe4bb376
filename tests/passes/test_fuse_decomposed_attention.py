"""fuse_decomposed_attention: attention written out by hand (q @ k.T, scale, optional causal mask,
softmax, @ v), as torch.compile's aot_autograd spells it (views around bmm), -> one flash_attention kernel;
any other mask, or a missing piece, leaves the ops alone."""

import pytest
import torch
from pass_helpers import capture_aten, execute, kernels, run, stats, targets, upto

from ds4c.passes.attention import fuse_decomposed_attention
from ds4c.precision import assert_close


def _attention(causal: bool, divide: bool):
    def fn(q, k, v):
        s = q @ k.transpose(-2, -1)
        s = s / (q.shape[-1] ** 0.5) if divide else s * (q.shape[-1] ** -0.5)
        if causal:
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
            s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    return fn


@pytest.mark.parametrize("causal,divide", [(True, False), (False, True), (True, True)])
def test_decomposed_attention_to_flash_attention(causal, divide, device):
    fn = _attention(causal, divide)
    shapes = [(2, 3, 9, 16)] * 3
    g, _ = capture_aten(fn, tuple(torch.randn(s) for s in shapes))
    assert "aten.bmm.default" in targets(g) and "aten._softmax.default" in targets(g)
    h = run(g, upto("fuse_attention") + [fuse_decomposed_attention])
    assert stats(h)["fuse_decomposed_attention"] == 1
    assert kernels(h) == ["flash_attention"]
    assert not any(t in targets(h) for t in ("aten.bmm.default", "aten._softmax.default"))
    p = next(h.nodes[n]["op"].problem for n in h if h.nodes[n]["op"].is_kernel)
    assert p["causal"] is causal and p["scale"] == pytest.approx(16 ** -0.5)
    q, k, v = (torch.randn(s) for s in shapes)
    # dynamo makes graph inputs in order of first use: k (transposed first), then q, then v
    assert_close(execute(h, {}, (k, q, v), device)[0].cpu(), fn(q, k, v))


def test_other_mask_is_left_alone(device):
    def fn(q, k, v):
        s = (q @ k.transpose(-2, -1)) * 0.25
        s = s.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(), float("-inf"))  # not a causal mask
        return torch.softmax(s, dim=-1) @ v

    g, _ = capture_aten(fn, tuple(torch.randn(1, 2, 9, 16) for _ in range(3)))
    h = run(g, upto("fuse_attention") + [fuse_decomposed_attention])
    assert "fuse_decomposed_attention" not in stats(h)
    assert "aten._softmax.default" in targets(h)

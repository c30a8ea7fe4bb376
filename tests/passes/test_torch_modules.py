"""Common torch.nn building blocks through the whole default pipeline, by both ways in: the export path
(weights as constants: sibling projections merge, norms fold) and torch.compile(backend="ds4c") (weights as
graph inputs). Outputs equal eager's on fresh inputs. Layouts are what these blocks stress: heads split by
views of one projection, `.contiguous()` after transposes, masks, convolutions (two layout bugs were found
this way: views of merged projections typed for the old layout, and layout-changing clones dropped)."""

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pass_helpers import capture, check_numbers, in_fp32, run

from ds4c.pipeline import default_passes
from ds4c.precision import assert_close


class OptBlock(nn.Module):
    """A pre-norm decoder block without rotary embeddings: q/k/v of one input split into heads by views, q
    scaled, causal attention, a ReLU MLP (OPT's shape)."""

    def __init__(self, d: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)

        def split(y):
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q = split(self.q(h) * (d // self.heads) ** -0.5)
        a = F.scaled_dot_product_attention(q, split(self.k(h)), split(self.v(h)), is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.relu(self.fc1(self.ln2(x))))


class ConvBlock(nn.Module):
    """A residual conv / batch-norm block, pooled."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.c2(F.relu(self.bn(self.c1(x))))).mean((2, 3))


class MaskedAttention(nn.Module):
    """One packed projection unbound into q/k/v, attention under a boolean mask (which stays on ATen)."""

    def __init__(self, d: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = (y.transpose(1, 2) for y in self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(a.transpose(1, 2).reshape(b, t, d))


MODULES = {
    "multihead_attention": (lambda: nn.MultiheadAttention(64, 4, batch_first=True),
                            lambda: (torch.randn(1, 5, 64),) * 3),
    "encoder_layer": (lambda: nn.TransformerEncoderLayer(64, 4, 96, dropout=0.0, batch_first=True, norm_first=True,
                                                         activation="gelu"),
                      lambda: (torch.randn(1, 9, 64),)),
    "decoder_layer": (lambda: nn.TransformerDecoderLayer(32, 2, 48, dropout=0.0, batch_first=True),
                      lambda: (torch.randn(1, 5, 32), torch.randn(1, 7, 32))),
    "opt_block": (OptBlock, lambda: (torch.randn(1, 6, 64),)),
    "conv_block": (ConvBlock, lambda: (torch.randn(2, 8, 9, 9),)),
    "masked_attention": (MaskedAttention, lambda: (torch.randn(1, 6, 32), torch.rand(6, 6) > 0.3)),
}


def _make(name: str, dtype: torch.dtype):
    torch.manual_seed(random.randint(0, 2**31))
    make_module, make_inputs = MODULES[name]
    module = make_module().eval().to(dtype)
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in make_inputs())
    return module, inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", MODULES)
def test_exported_module_matches_eager(name, dtype, device):
    """Against eager in float32, within the tolerance of the dtype the module runs in."""
    module, inputs = _make(name, dtype)
    with torch.no_grad():
        g, state = capture(module, inputs)
        check_numbers(run(g, default_passes("bf16")), state, in_fp32(module), inputs, device, dtype, what=name)


@pytest.mark.parametrize("name", MODULES)
def test_module_through_the_backend_matches_eager(name, device, ds4c_runs):
    module, inputs = _make(name, torch.float32)
    module, inputs = module.to(device), tuple(x.to(device) for x in inputs)
    torch._dynamo.reset()
    with torch.no_grad():
        ref = module(*inputs)
        out = torch.compile(module, backend="ds4c")(*inputs)
    refs, outs = (ref, out) if isinstance(ref, tuple) else ((ref,), (out,))
    for o, r in zip(outs, refs, strict=True):
        assert_close(o.float().cpu(), r.float().cpu(), torch.float32, what=name)
    assert ds4c_runs
    torch._dynamo.reset()

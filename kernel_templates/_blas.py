"""The vendor-BLAS path of the matmul template (config IMPL=1): the product through torch (cuBLAS on NVIDIA
GPUs), the epilogue through torch ops. The tuner weighs it against the Triton tiles like any other config,
as Inductor weighs its ATen choice against its templates: at large M the vendor GEMM is the one to beat.

The common epilogues need no extra pass over the output: a bias or a residual goes into cuBLAS's own
epilogue (addmm, beta=1, summed in fp32); SwiGLU costs two products and one fused pass (silu(gate) * up in
fp32, rounded once) over them. Any other epilogue is evaluated in fp32 from the expression, like the
reference. Quantised weights (int8, fp8 with a float32 scale per group of a row's weights) are first written
in the activation dtype, w * scale rounded once, by one Triton pass (`dequant`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds4c.kernel_templates import expr as E
from ds4c.kernel_templates._mm_common import SWIGLU

_SILU_MUL_BLOCK = 2048


@triton.jit
def _silu_mul(out_ptr, gate_ptr, up_ptr, n, BLOCK: tl.constexpr):
    """out = silu(gate) * up over n contiguous elements, in fp32."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    g = tl.load(gate_ptr + offs, mask=live, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=live, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (g / (1.0 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty), mask=live)


_DEQUANT_BLOCK = 1024


@triton.jit
def _dequant_rows(out_ptr, w_ptr, scale_ptr, K, GROUPS, GROUP: tl.constexpr, BLOCK: tl.constexpr):
    """out[n, k] = w[n, k] * scale[n, k // GROUP] in fp32, rounded once to out's dtype; program (n, j) does
    BLOCK of row n."""
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = offs < K
    row = n.to(tl.int64) * K
    s = tl.load(scale_ptr + n.to(tl.int64) * GROUPS + offs // GROUP, mask=live)
    w = tl.load(w_ptr + row + offs, mask=live).to(tl.float32)
    tl.store(out_ptr + row + offs, (w * s).to(out_ptr.dtype.element_ty), mask=live)


def dequant(w: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, group: int) -> torch.Tensor:
    """A new [N, K] tensor of dtype holding w [N, K] (int8/fp8, contiguous) times its scales [N, ceil(K / group)]
    (float32, one per group of `group` weights of a row)."""
    N, K = w.shape
    out = torch.empty((N, K), dtype=dtype, device=w.device)
    _dequant_rows[(N, triton.cdiv(K, _DEQUANT_BLOCK))](out, w, scale, K, scale.shape[1], GROUP=group,
                                                       BLOCK=_DEQUANT_BLOCK, num_warps=4)
    return out


def silu_mul(out: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> None:
    """out = silu(gate) * up, one pass; all three contiguous and of one shape."""
    n = out.numel()
    _silu_mul[(triton.cdiv(n, _SILU_MUL_BLOCK),)](out, gate, up, n, BLOCK=_SILU_MUL_BLOCK, num_warps=8)


def run(epilogue: E.Expr, out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None = None,
        bias: torch.Tensor | None = None, extras: tuple[torch.Tensor, ...] = ()) -> None:
    """out = epilogue(acc = x @ w.T, acc2 = x @ w2.T, bias, e0, ...), written in place."""
    if w2 is None and not extras and bias is None and epilogue == "acc":
        torch.mm(x, w.t(), out=out)
        return
    if w2 is None and len(extras) + (bias is not None) == 1 and epilogue in (
            ("add", "acc", "e0"), ("add", "e0", "acc"), ("add", "acc", "bias"), ("add", "bias", "acc")):
        c = extras[0] if extras else bias.expand_as(out)
        torch.addmm(c, x, w.t(), out=out)
        return
    if w2 is not None and not extras and bias is None and epilogue == SWIGLU and out.is_contiguous():
        silu_mul(out, torch.mm(x, w.t()), torch.mm(x, w2.t()))
        return
    env = {"acc": torch.mm(x, w.t()).float()}
    if w2 is not None:
        env["acc2"] = torch.mm(x, w2.t()).float()
    if bias is not None:
        env["bias"] = bias.float()
    env.update({f"e{i}": e.float() for i, e in enumerate(extras)})
    out.copy_(E.evaluate(epilogue, env).expand(out.shape))

"""Precision: one policy table (op class -> compute / accumulate / output dtypes per mode) and one
tolerance table (per dtype) that every test, the tuner's correctness check and the benchmarks use.

References are computed in float32 or float64; a result passes when
    ||out - ref|| / ||ref|| <= TOLERANCE[dtype].rel  and  max|out - ref| <= atol + rtol * |ref| (elementwise)
is not required: the norm-wise relative error is the measure, as in METHOD.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rel: float  # bound on ||out - ref||_2 / ||ref||_2
    atol: float  # bound on max |out - ref| where ref is ~0 (norm-wise check is the main one)


# One row per dtype of the result under test. fp32 rows allow for TF32 tensor cores on the GPU.
TOLERANCE: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rel=1e-10, atol=1e-10),
    torch.float32: Tolerance(rel=2e-3, atol=1e-3),  # TF32 tl.dot on the GPU lands near 3e-4
    torch.float16: Tolerance(rel=2e-3, atol=2e-3),
    torch.bfloat16: Tolerance(rel=1.2e-2, atol=1.6e-2),
    torch.int8: Tolerance(rel=2e-2, atol=2e-2),  # int8 weights: weight-only quantization error
    torch.float8_e4m3fn: Tolerance(rel=6e-2, atol=6e-2),
}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 over the elements ref defines. NaN in ref marks an element that
    must stay unwritten (still NaN, as outputs are poisoned): a value there, or NaN or Inf anywhere else in
    out, gives inf."""
    o = out.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    untouched = torch.isnan(r)
    if untouched.any():
        if o.shape != r.shape or not torch.isnan(o[untouched]).all():
            return float("inf")
        o, r = o[~untouched], r[~untouched]
    if not torch.isfinite(o).all():
        return float("inf")
    denom = r.norm().item()
    diff = (o - r).norm().item()
    return diff / denom if denom > 0 else diff


def close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """True when out matches ref within the tolerance of dtype (default: out's dtype)."""
    tol = TOLERANCE[dtype or out.dtype]
    return out.shape == ref.shape and rel_error(out, ref) <= tol.rel


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None, what: str = ""):
    """Assert with a message that carries the measured error and the bound."""
    tol = TOLERANCE[dtype or out.dtype]
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_error(out, ref)
    assert err <= tol.rel, f"{what}: rel error {err:.3e} > {tol.rel:.1e} ({dtype or out.dtype})"


@dataclass(frozen=True)
class Precision:
    compute: torch.dtype | None  # dtype of operands as the kernel reads them (None: as given)
    accumulate: torch.dtype
    output: torch.dtype | None  # None: the graph's dtype


# Weight-only quantization (int8, fp8) keeps one float32 scale per QUANT_GROUP consecutive weights of an
# output row: scale [N, ceil(K / QUANT_GROUP)]. Measured on random Llama-3.2-1B weights (prefill logits against
# fp32, int8 FFN weights): one scale per row gave 1.86x eager bf16's error, groups of 128 1.59x, of 64 1.52x.
QUANT_GROUP = 64


def scale_groups(k: int) -> int:
    """Scales per row of a quantised weight of k columns (the last group may be short)."""
    return -(-k // QUANT_GROUP)


def dequantize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """w [N, K] (int8/fp8) times its scales [N, scale_groups(K)], in float32 on w's device."""
    per_weight = scale.to(torch.float32).repeat_interleave(QUANT_GROUP, dim=1)[:, :w.shape[1]]
    return w.to(torch.float32) * per_weight


# op class -> Precision, per named mode. "bf16" keeps the model's dtype everywhere with fp32 accumulation;
# "mixed" stores the FFN and output-head weights as int8 (one scale per QUANT_GROUP weights) and keeps attention
# and norms in bf16. Prefill logits error against fp32 on random Llama-3.2-1B weights, as a multiple of eager
# bf16's (bench/results/2026-12-03-quant-accuracy-llama-3.2-1b-cpu.json): int8 FFN 1.54x, FFN and head 1.55x,
# FFN and attention projections 1.95x. The head costs almost nothing (its error is not carried through layers)
# and is ~7% of the weight bytes a decode step reads on Llama-3.1-8B; the attention projections do not tolerate it.
POLICY: dict[str, dict[str, Precision]] = {
    "bf16": {
        "ffn_matmul": Precision(None, torch.float32, None),
        "attn_matmul": Precision(None, torch.float32, None),
        "attention": Precision(None, torch.float32, None),
        "norm": Precision(torch.float32, torch.float32, None),
        "pointwise": Precision(torch.float32, torch.float32, None),
        "lm_head": Precision(None, torch.float32, None),
    },
    "mixed": {
        "ffn_matmul": Precision(torch.int8, torch.float32, None),
        "attn_matmul": Precision(None, torch.float32, None),
        "attention": Precision(None, torch.float32, None),
        "norm": Precision(torch.float32, torch.float32, None),
        "pointwise": Precision(torch.float32, torch.float32, None),
        "lm_head": Precision(torch.int8, torch.float32, None),
    },
}

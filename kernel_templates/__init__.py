"""Kernel templates: Triton sources with named holes (`*.py.j2`), each with its search space, validity
predicate, heuristic default and torch reference beside it (`<name>.py`). See `base.py` for the contract.

Sits between the passes (which describe kernels as problems) and the tuning database (which picks configs).
"""

from __future__ import annotations

import importlib

from .base import Config, Problem, SearchSpace, Template, render

# template name -> module defining TEMPLATE. A literal table: adding a template is one line here.
_MODULES = {
    "matmul": "ds4c.kernel_templates.matmul",  # tensor-core GEMM, fused prologue/epilogue (prefill)
    "gemv": "ds4c.kernel_templates.gemv",  # the same problem for a few rows (decode)
    "pointwise": "ds4c.kernel_templates.pointwise",  # a fused elementwise chain with broadcasting
    "rmsnorm": "ds4c.kernel_templates.rmsnorm",  # row RMSNorm, optionally after a residual add
    "softmax": "ds4c.kernel_templates.softmax",  # row softmax with a scale
    "rope": "ds4c.kernel_templates.rope",  # rotary embedding (rotate-half layout)
    "rope_kv": "ds4c.kernel_templates.rope_kv",  # rope of q and k with the KV-cache write (in place)
    "flash_attention": "ds4c.kernel_templates.flash_attention",  # causal GQA attention (prefill)
    "decode_attention": "ds4c.kernel_templates.decode_attention",  # split-KV attention on a cache (decode)
    # the same with the step's rope and KV-cache write folded in (one decode launch instead of two)
    "decode_attention_rope": "ds4c.kernel_templates.decode_attention_rope",
}


def names() -> tuple[str, ...]:
    return tuple(_MODULES)


def get(name: str) -> Template:
    """The Template called name; KeyError for a name no template has."""
    if name not in _MODULES:
        raise KeyError(f"no kernel template named {name!r}")
    return importlib.import_module(_MODULES[name]).TEMPLATE


__all__ = ["Config", "Problem", "SearchSpace", "Template", "get", "names", "render"]

"""Kernels compile for sm_90 ahead of time, on a machine without a GPU (the interpreter cannot tell): the H200
defaults of the templates at Llama-3.1-8B prefill and decode shapes, and the decode kernels with
programmatic dependent launch, whose launch then carries launch_pdl and whose PTX waits on its predecessor
(griddepcontrol.wait). On a Hopper GPU, tests/kernels/test_pdl.py runs the latter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ds4c.device import H200
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.kernel_templates.matmul import BLAS, tile_default

HELPER = Path(__file__).with_name("sm90_compile.py")
DECODE = [
    ("gemv", C.problem(1, 6144, 4096, "bfloat16", rms_eps=1e-5)),
    ("gemv", C.problem(1, 14336, 4096, "bfloat16", rms_eps=1e-5, dual=True, epilogue=C.SWIGLU)),
    ("gemv", C.problem(1, 4096, 14336, "bfloat16", n_extra=1, epilogue=("add", "e0", "acc"))),
    # int8 weights (precision mode "mixed"): the H200 default loads one weight through tensor descriptors
    ("gemv", C.problem(1, 4096, 14336, "bfloat16", w_dtype="int8", n_extra=1, epilogue=("add", "e0", "acc"))),
    ("rope_kv", {"B": 1, "Hq": 32, "Hkv": 8, "T": 1, "D": 128, "S_max": 4096, "dtype": "bfloat16",
                 "cos_dtype": "float32"}),
    ("decode_attention", {"B": 1, "Hq": 32, "Hkv": 8, "S_max": 4096, "D": 128, "dtype": "bfloat16",
                          "scale": 128 ** -0.5}),
    # Qwen2.5-7B: biased QKV over K = 3584 (no power of 2), 7 query heads per KV head
    ("gemv", C.problem(1, 4608, 3584, "bfloat16", rms_eps=1e-6, bias=True, epilogue=("add", "acc", "bias"))),
    ("decode_attention", {"B": 1, "Hq": 28, "Hkv": 4, "S_max": 4096, "D": 128, "dtype": "bfloat16",
                          "scale": 128 ** -0.5}),
    ("decode_attention_rope", {"B": 1, "Hq": 32, "Hkv": 8, "S_max": 4096, "D": 128, "dtype": "bfloat16",
                               "scale": 128 ** -0.5, "cos_dtype": "bfloat16"}),
]


def _attn(hq: int, hkv: int, t: int) -> dict:
    return {"B": 1, "Hq": hq, "Hkv": hkv, "T": t, "S": t, "D": 128, "dtype": "bfloat16", "causal": True,
            "scale": 128 ** -0.5}


PREFILL = [  # (template, problem, config or None for the H200 default); matmul: the Triton tiles, not cuBLAS
    ("matmul", C.problem(2048, 6144, 4096, "bfloat16"), tile_default(C.problem(2048, 6144, 4096), H200)),
    ("matmul", C.problem(2048, 14336, 4096, "bfloat16", dual=True, epilogue=C.SWIGLU),
     tile_default(C.problem(2048, 14336, 4096, dual=True, epilogue=C.SWIGLU), H200)),
    ("matmul", C.problem(64, 256, 128, "bfloat16", dual=True, epilogue=C.SWIGLU), BLAS),  # its SwiGLU kernel
    ("flash_attention", _attn(32, 8, 2048), None),
    ("flash_attention", {**_attn(32, 8, 2048), "o_bthd": True}, None),  # written as the o-projection reads it
    ("rmsnorm", {"rows": 2048, "cols": 4096, "dtype": "bfloat16", "w_dtype": "bfloat16", "eps": 1e-5,
                 "residual": True}, None),
    ("rope", {"B": 1, "H": 32, "T": 2048, "D": 128, "dtype": "bfloat16", "cos_dtype": "float32"}, None),
]


def _run(cases: list) -> list:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(HELPER)], input=json.dumps(cases), capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


def test_h200_defaults_compile_for_sm90_at_prefill_shapes():
    cases = [[name, p, config or get(name).default(p, H200), {}] for name, p, config in PREFILL]
    results = _run(cases)
    assert [[k["kernel"] for k in r] for r in results][2] == ["_silu_mul"]
    assert all(r and all(k["cubin_bytes"] > 0 and k["shared"] <= H200.smem_per_block for k in r)
               for r in results), results


def test_decode_kernels_compile_for_sm90_with_and_without_pdl():
    for pdl in (True, False):
        results = _run([[name, p, get(name).default(p, H200), {"pdl": pdl}] for name, p in DECODE])
        assert [len(r) for r in results] == [1, 1, 1, 1, 1, 2, 1, 2, 2]  # decode attention: split and combine
        for launches in results:
            for k in launches:
                assert k["cubin_bytes"] > 0 and k["shared"] <= H200.smem_per_block
                assert k["launch_pdl"] is pdl and k["gdc_wait"] is pdl, k

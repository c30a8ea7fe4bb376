"""The decode kernels with programmatic dependent launch compile for sm_90 (ahead of time, no GPU needed):
the launch carries launch_pdl and the PTX waits on its predecessor (griddepcontrol.wait); without pdl,
neither. On a Hopper GPU, tests/kernels/test_pdl.py runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ds4c.device import H200
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get

HELPER = Path(__file__).with_name("sm90_compile.py")
SWIGLU = ("mul", ("silu", "acc"), "acc2")
CASES = [
    ("gemv", C.problem(1, 6144, 4096, "bfloat16", rms_eps=1e-5)),
    ("gemv", C.problem(1, 14336, 4096, "bfloat16", rms_eps=1e-5, dual=True, epilogue=SWIGLU)),
    ("gemv", C.problem(1, 4096, 14336, "bfloat16", n_extra=1, epilogue=("add", "e0", "acc"))),
    ("rope_kv", {"B": 1, "Hq": 32, "Hkv": 8, "T": 1, "D": 128, "S_max": 4096, "dtype": "bfloat16",
                 "cos_dtype": "float32"}),
    ("decode_attention", {"B": 1, "Hq": 32, "Hkv": 8, "S_max": 4096, "D": 128, "dtype": "bfloat16",
                          "scale": 128 ** -0.5}),
]


def _compile(pdl: bool) -> list:
    cases = [[name, p, get(name).default(p, H200), {"pdl": pdl}] for name, p in CASES]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(HELPER)], input=json.dumps(cases), capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


def test_decode_kernels_compile_for_sm90_with_and_without_pdl():
    for pdl in (True, False):
        results = _compile(pdl)
        assert [len(r) for r in results] == [1, 1, 1, 1, 2]  # decode attention: split and combine kernels
        for launches in results:
            for k in launches:
                assert k["cubin_bytes"] > 0
                assert k["launch_pdl"] is pdl and k["gdc_wait"] is pdl, k

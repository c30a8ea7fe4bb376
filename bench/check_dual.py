"""GPU check of the dual (SwiGLU) matmul across configs: every valid config of a small grid must match the
reference on fresh inputs, run three times (a race shows up as a moving error)."""

import itertools
import json
import sys

import torch

from ds4c import kernel_templates
from ds4c.device import current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.precision import rel_error
from ds4c.runtime.loader import load_source

T = kernel_templates.get("matmul")
gpu = current_gpu()
rows = []
problems = [C.problem(64, 160, 64, "bfloat16", rms_eps=1e-5, dual=True, epilogue=("mul", ("silu", "acc"), "acc2")),
            C.problem(2048, 14336, 4096, "bfloat16", rms_eps=1e-5, dual=True,
                      epilogue=("mul", ("silu", "acc"), "acc2")),
            C.problem(300, 1536, 576, "bfloat16", dual=True, epilogue=("mul", ("silu", "acc"), "acc2")),
            C.problem(2048, 6144, 4096, "bfloat16", rms_eps=1e-5),
            C.problem(64, 128, 64, "bfloat16", rms_eps=1e-5)]
for p in problems:
    mod = load_source(T.source(p))
    g = torch.Generator().manual_seed(0)
    outs, ins = T.make_inputs(p, torch.device("cuda"), g)
    ref = T.reference(p, ins)[0]
    grid = itertools.product((64, 128), (64, 128, 256), (64,), (4, 8), (1, 2, 3, 4))
    cands = [T.default(p, gpu)] + [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=s,
                                        IMPL=0) for bm, bn, bk, w, s in grid]
    for cfg in cands:
        if not T.valid(cfg, p, gpu):
            continue
        errs = []
        for _ in range(3):
            outs[0].fill_(float("nan"))
            mod.launch(*outs, *ins, **T.launch_kwargs(p), **cfg)
            errs.append(rel_error(outs[0], ref))
        rows.append({"M": p["M"], "N": p["N"], "K": p["K"], "config": cfg, "errors": errs,
                     "ok": max(errs) <= 1.2e-2})
bad = [r for r in rows if not r["ok"]]
print(f"{len(rows)} configs, {len(bad)} wrong")
for r in bad[:20]:
    print(r)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)

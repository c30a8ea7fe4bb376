"""GPU benchmark for the memory-bound templates (not a test): rmsnorm, rope, softmax and pointwise default
configs against torch eager on Llama-3.1-8B sizes, timed with triton.testing.do_bench medians, reported as
GB/s of the minimum bytes moved and as a share of the copy bandwidth measured in the same run; one JSON
record.

    python bench/bench_rowwise.py --out bench/results/rowwise-h200.json [--sweep]

Every kernel is checked against its template's fp64 reference before it is timed. Each case is timed as a
plain launch and as a CUDA graph replay (the decode-sized ones are launch-bound otherwise). --sweep also
times every valid config of each case.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from ds4c.benchmark.measure import graph_replay, guarded
from ds4c.benchmark.record import git_commit
from ds4c.benchmark.roofline import measure_copy_gb_s
from ds4c.device import current_gpu
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import dtype_of
from ds4c.precision import TOLERANCE, rel_error
from ds4c.runtime.loader import load_source

DEVICE = torch.device("cuda")
QUANTILES = [0.5, 0.2, 0.8]
BF16 = "bfloat16"


def _silu_mul(rows: int, cols: int) -> dict:
    contig = {"dtype": BF16, "strides": [cols, 1]}
    return {"shape": [rows, cols], "dtype": BF16, "inputs": [contig, contig],
            "expr": ["mul", ["silu", "x0"], "x1"]}


def _rms(rows: int) -> dict:
    return {"rows": rows, "cols": 4096, "dtype": BF16, "w_dtype": BF16, "eps": 1e-5, "residual": True}


# (case name, template, problem, eager function over the template's inputs)
def _eager_rmsnorm(x, w, r, eps=1e-5):
    h = x + r
    hf = h.float()
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype), h


def _eager_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


CASES = [
    ("rmsnorm_1x4096_residual", "rmsnorm", _rms(1), _eager_rmsnorm),
    ("rmsnorm_2048x4096_residual", "rmsnorm", _rms(2048), _eager_rmsnorm),
    ("rope_q_1x32x2048x128", "rope", {"B": 1, "H": 32, "T": 2048, "D": 128, "dtype": BF16, "cos_dtype": BF16},
     _eager_rope),
    ("softmax_65536x2048", "softmax", {"rows": 32 * 2048, "cols": 2048, "dtype": BF16, "scale": 128 ** -0.5},
     lambda x: torch.softmax(x * 128 ** -0.5, dim=-1)),
    ("silu_mul_2048x14336", "pointwise", _silu_mul(2048, 14336), lambda a, b: F.silu(a) * b),
]
EXTRA_EAGER = {"rmsnorm": ("F.rms_norm", lambda x, w, r: F.rms_norm(x + r, (x.shape[-1],), w, 1e-5))}


def _time(fn, nbytes: float, copy_gbs: float) -> dict:
    out = {}
    for mode, f in (("plain", fn), ("graph", graph_replay(fn))):
        med, q20, q80 = do_bench(f, warmup=25, rep=200, quantiles=QUANTILES)
        out[mode] = {"median_ms": med, "p20_ms": q20, "p80_ms": q80, "gbs": nbytes / (med * 1e-3) / 1e9,
                     "share_copy_bw": nbytes / (med * 1e-3) / 1e9 / copy_gbs}
    return out


def bench_case(name, tname, p, eager, copy_gbs: float, sweep: bool) -> dict:
    t = get(tname)
    gpu = current_gpu()
    outs, ins = t.make_inputs(p, DEVICE, torch.Generator().manual_seed(0))
    refs = t.reference(p, ins)
    flops, nbytes = t.cost(p)
    mod = load_source(t.source(p))
    kw = t.launch_kwargs(p)
    bound = TOLERANCE[dtype_of(p["dtype"])].rel

    def run_config(cfg):
        for o in outs:
            o.fill_(float("nan"))
        mod.launch(*outs, *ins, **kw, **cfg)
        errs = [rel_error(o, r) for o, r in zip(outs, refs, strict=True)]
        rec = {"config": cfg, "rel_error": max(errs)}
        if max(errs) > bound:
            return {**rec, "error": "wrong result"}
        return {**rec, **_time(lambda: mod.launch(*outs, *ins, **kw, **cfg), nbytes, copy_gbs)}

    def run_eager(fn):
        res = fn(*ins)
        res = res if isinstance(res, tuple) else (res,)
        errs = [rel_error(o, r) for o, r in zip(res, refs, strict=False)]
        return {"rel_error": max(errs), **_time(lambda: fn(*ins), nbytes, copy_gbs)}

    rec = {"problem": p, "flops": flops, "min_bytes": nbytes, "config_default": t.default(p, gpu)}
    rec["ds4c_default"] = guarded(lambda: run_config(t.default(p, gpu)))
    rec["eager"] = guarded(lambda: run_eager(eager))
    if tname in EXTRA_EAGER:
        label, fn = EXTRA_EAGER[tname]
        rec[label] = guarded(lambda: run_eager(fn))
    if sweep:
        rec["sweep"] = [guarded(lambda c=c: run_config(c)) for c in t.space.grid() if t.valid(c, p, gpu)]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    ap.add_argument("--out", default=f"bench/results/rowwise-{stamp}.json")
    ap.add_argument("--sweep", action="store_true", help="also time every valid config")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_rowwise needs a CUDA GPU")
    copy_gbs = measure_copy_gb_s(torch.device("cuda"))
    only = {s for s in args.only.split(",") if s}
    record = {
        "kind": "rowwise_kernels", "date": stamp, "commit": git_commit(), "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "command": " ".join(sys.argv), "ceilings": {"copy_gb_s": copy_gbs},
        "cases": {name: guarded(lambda n=name, tn=tn, p=p, e=e: bench_case(n, tn, p, e, copy_gbs, args.sweep))
                  for name, tn, p, e in CASES if not only or name in only},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str))
    for name, rec in record["cases"].items():
        d, e = rec.get("ds4c_default", {}), rec.get("eager", {})
        dg, eg = d.get("graph", {}).get("gbs", float("nan")), e.get("graph", {}).get("gbs", float("nan"))
        print(f"{name:32s} ds4c {dg:8.1f} GB/s  eager {eg:8.1f} GB/s (graph; copy {copy_gbs:.0f} GB/s)"
              f"  {d.get('error', '')}{e.get('error', '')}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

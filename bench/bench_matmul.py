"""Benchmark of the matmul/gemv templates against torch.matmul on the Llama-3.1-8B linear layers (a GPU
script, not a test). Decode (M=1) runs the gemv template, prefill (M=2048) the matmul template, each with its
heuristic default config; the gate+up projection runs as one dual-weight SwiGLU kernel against torch's
concatenated matmul plus silu*mul. Each result is checked against torch before it is timed.

    python bench/bench_matmul.py --out bench/results/matmul-h200.json [--dtype bfloat16] [--w-dtype same]
        [--rows 1,2048] [--sweep 40]

--sweep N also times N random valid configs of the template besides the default and reports the best
(`best_us`, `best_config`): what a tuning run would find, without the tuning database.

Writes {kind, gpu, torch, triton, commit, timer, rows: [{shape, ..., ds4c_us, torch_us, gbps, tflops}]}.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
import triton
import triton.testing

from ds4c.benchmark.record import git_commit
from ds4c.device import current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.kernel_templates import matmul as matmul_template
from ds4c.precision import TOLERANCE, dequantize, rel_error
from ds4c.runtime.loader import load_source

# (name, N, K, dual): Llama-3.1-8B linear layers; gate+up is one dual-weight kernel with N = 14336
SHAPES = [("qkv", 6144, 4096, False), ("o", 4096, 4096, False), ("gate_up", 14336, 4096, True),
          ("down", 4096, 14336, False), ("head", 128256, 4096, False)]
ROWS = (1, 2048)


def _torch_fn(p: dict, ins: list):
    """torch's version of the same layer: dequantised weights, one matmul (dual: over both weights)."""
    args = dict(zip(C.arg_names(p), ins, strict=True))
    act = args["x"].dtype

    def weight(name: str) -> torch.Tensor:
        w = args[name]
        if p["w_dtype"] == "same":
            return w
        return dequantize(w, args[name + "_scale"]).to(act)

    x = args["x"]
    if p["dual"]:
        w_cat = torch.cat([weight("w"), weight("w2")])
        n = p["N"]

        def fn():
            y = torch.matmul(x, w_cat.T)
            return torch.nn.functional.silu(y[:, :n]) * y[:, n:]
        return fn
    w = weight("w")
    return lambda: torch.matmul(x, w.T)


def _time(fn, timer: str) -> float:
    """Median microseconds."""
    if timer == "cudagraph":
        ms = triton.testing.do_bench_cudagraph(fn, rep=100, quantiles=[0.5])
    else:
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5])
    ms = ms[0] if isinstance(ms, (list, tuple)) else ms
    return 1000.0 * ms


def bench_one(name: str, N: int, K: int, dual: bool, M: int, args, gen) -> dict:
    p = C.problem(M, N, K, args.dtype, w_dtype=args.w_dtype, dual=dual, epilogue=C.SWIGLU if dual else "acc")
    template = get("gemv" if M <= 16 else "matmul")
    config = template.default(p, current_gpu())
    outs, ins = template.make_inputs(p, torch.device("cuda"), gen)
    mod = load_source(template.source(p))
    kwargs = template.launch_kwargs(p)

    def ours():
        mod.launch(*outs, *ins, **kwargs, **config)

    theirs = _torch_fn(p, ins)
    ours()
    expected = theirs()
    torch.cuda.synchronize()
    err = rel_error(outs[0], expected.float())
    if err > 2 * TOLERANCE[outs[0].dtype].rel:
        raise AssertionError(f"{name} M={M}: ds4c differs from torch, rel error {err:.3e}")
    ds4c_us, torch_us = _time(ours, args.timer), _time(theirs, args.timer)
    flops, nbytes = template.cost(p)
    row = {"shape": name, "M": M, "N": N, "K": K, "dual": dual, "dtype": args.dtype, "w_dtype": args.w_dtype,
           "template": template.name, "config": config, "rel_err": err,
           "ds4c_us": ds4c_us, "torch_us": torch_us, "speedup": torch_us / ds4c_us,
           "gbps": nbytes / ds4c_us / 1e3, "tflops": flops / ds4c_us / 1e6}
    if args.sweep:
        gpu = current_gpu()
        valid = [c for c in template.space.grid() if template.valid(c, p, gpu) and c != config]
        best_us, best = ds4c_us, config
        for c in random.Random(0).sample(valid, min(args.sweep, len(valid))):
            def trial(c=c):
                mod.launch(*outs, *ins, **kwargs, **c)
            outs[0].fill_(float("nan"))
            trial()
            torch.cuda.synchronize()
            if rel_error(outs[0], expected.float()) > 2 * TOLERANCE[outs[0].dtype].rel:
                raise AssertionError(f"{name} M={M} {c}: differs from torch")
            us = _time(trial, args.timer)
            if us < best_us:
                best_us, best = us, c
        row.update(best_us=best_us, best_config=best, best_gbps=nbytes / best_us / 1e3,
                   swept=min(args.sweep, len(valid)))
    if template.name == "matmul" and config.get("IMPL") == 1:  # the default is the BLAS: time the tiles too
        tiles = matmul_template.tile_default(p, current_gpu())

        def triton_tiles():
            mod.launch(*outs, *ins, **kwargs, **tiles)

        triton_tiles()
        torch.cuda.synchronize()
        tiles_us = _time(triton_tiles, args.timer)
        row["triton_tiles"] = {"config": tiles, "rel_err": rel_error(outs[0], expected.float()), "us": tiles_us,
                               "speedup": torch_us / tiles_us, "tflops": flops / tiles_us / 1e6}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="path of the JSON record to write")
    ap.add_argument("--dtype", default="bfloat16", choices=C.ACT_DTYPES)
    ap.add_argument("--w-dtype", default="same", choices=C.W_DTYPES)
    ap.add_argument("--timer", default="do_bench", choices=("do_bench", "cudagraph"),
                    help="do_bench (median of eager launches) or do_bench_cudagraph (launch overhead hidden)")
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated M values")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES), help="comma-separated layer names")
    ap.add_argument("--sweep", type=int, default=0, help="also time this many random valid configs")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_matmul needs a CUDA GPU")
    gen = torch.Generator().manual_seed(0)
    names = args.shapes.split(",")
    rows = [bench_one(n, N, K, d, int(M), args, gen) for M in args.rows.split(",") for n, N, K, d in SHAPES
            if n in names]
    record = {"kind": "matmul", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "commit": git_commit(), "timer": args.timer, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    head = ("shape", "M", "tmpl", "ds4c us", "torch us", "x", "GB/s", "TFLOP/s", "best us", "best GB/s")
    print("{:>8} {:>5} {:>6} {:>9} {:>9} {:>5} {:>7} {:>8} {:>8} {:>9}".format(*head))
    for r in rows:
        print(f"{r['shape']:>8} {r['M']:>5} {r['template']:>6} {r['ds4c_us']:>9.1f} {r['torch_us']:>9.1f} "
              f"{r['speedup']:>5.2f} {r['gbps']:>7.0f} {r['tflops']:>8.1f} {r.get('best_us', 0):>8.1f} "
              f"{r.get('best_gbps', 0):>9.0f}  {r.get('best_config', '')}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

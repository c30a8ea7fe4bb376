"""Benchmark of the matmul template's implementations against each other on the Llama-3.1-8B prefill layers
(a GPU script, not a test): IMPL=1 (the vendor BLAS, then the epilogue), IMPL=0 (pointer-load tiles,
tile_default) and IMPL=2 (persistent TMA tiles) over a few tiles, each with the epilogue the layer has in a
compiled model. Every result is checked against the BLAS one before it is timed; a dual-weight check runs
each candidate three times, so a pipelining race shows up as a moving error.

    python bench/bench_matmul_impls.py --out bench/results/matmul-impls-h200.json [--rows 2048] [--heat-ms 400]

--heat-ms times each candidate as a prefill runs it, under sustained load: the candidate runs back to back
for that long first (the board reaches its power limit and the clocks drop), then windows of back-to-back
launches are timed with events while NVML counts the energy and samples the SM clock. Without it each
candidate is timed by do_bench from a cool start (boost clocks).

Writes {kind, gpu, torch, triton, commit, timer, rows: [{shape, M, N, K, impl, config, variant, rel_err,
errors, us, tflops, vs_blas (, mj_per_launch, sm_mhz, watts with --heat-ms)}]}, rewritten after each row so a
run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton
import triton.testing

from ds4c.benchmark.measure import ClockSampler, EnergyMeter, energy_since, energy_start
from ds4c.benchmark.record import git_commit
from ds4c.device import current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.kernel_templates import matmul as mm
from ds4c.precision import TOLERANCE, rel_error
from ds4c.runtime.loader import load_source

T = get("matmul")
RESIDUAL = dict(n_extra=1, epilogue=("add", "acc", "e0"))
# (name, N, K, problem keywords): the layers of one Llama-3.1-8B block and the head, as the passes fuse them
SHAPES = [("qkv", 6144, 4096, {}), ("o", 4096, 4096, RESIDUAL),
          ("gate_up", 14336, 4096, dict(dual=True, epilogue=C.SWIGLU)),
          ("down", 4096, 14336, RESIDUAL), ("head", 128256, 4096, {})]
# IMPL=2 candidates: (variant, (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages), module constants of
# matmul_tma.py.j2 to set). Dual weights: one dot over a box of both weights (stacked) or two dots.
TMA = [("tma", (128, 256, 64, 8, 8, 3), {}), ("tma-no-flatten", (128, 256, 64, 8, 8, 3), {"_TMA_FLATTEN": False}),
       ("tma", (128, 256, 64, 8, 8, 4), {}), ("tma", (256, 128, 64, 8, 8, 3), {})]
STACKED, TWO_DOTS = {"_TMA_DUAL_STACKED": True}, {"_TMA_DUAL_STACKED": False}
TMA_DUAL = [("tma-stacked", (128, 128, 64, 8, 8, s), STACKED) for s in (4, 3)]
TMA_DUAL += [("tma-stacked-flatten", (128, 128, 64, 8, 8, s), {**STACKED, "_TMA_FLATTEN": True}) for s in (4, 3)]
TMA_DUAL += [("tma-stacked", (256, 64, 64, 8, 8, 3), STACKED), ("tma-two-dots", (128, 128, 64, 8, 8, 4), TWO_DOTS)]


def tma(bm, bn, bk, group, warps, stages) -> dict:
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps,
            "num_stages": stages, "IMPL": 2}


def _time(fn) -> float:
    """Median microseconds of eager launches."""
    ms = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5])
    return 1000.0 * (ms[0] if isinstance(ms, (list, tuple)) else ms)


def _time_sustained(fn, heat_ms: float, meter, windows: int = 5, window_ms: float = 100.0) -> dict:
    """Median microseconds per launch over timed windows of back-to-back launches after heat_ms of the same
    launches, with the energy per launch and the mean SM clock and power over the windows (NVML)."""
    t0 = time.perf_counter()
    while (time.perf_counter() - t0) * 1e3 < heat_ms:
        for _ in range(8):
            fn()
        torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    n = max(1, int(window_ms / max(start.elapsed_time(end), 1e-3)))
    per_launch = []
    with ClockSampler(meter) as clock:
        window = energy_start(meter)
        for _ in range(windows):
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            per_launch.append(start.elapsed_time(end) * 1e3 / n)
        j_per_launch, watts = energy_since(meter, window, torch.device("cuda"), windows * n)
    out = {"us": statistics.median(per_launch), "sm_mhz": clock.mean_mhz}
    if meter is not None:
        out.update(mj_per_launch=j_per_launch * 1e3, watts=watts)
    return out


def candidates(p: dict, gpu) -> list[tuple[str, dict, dict]]:
    """(variant, config, module constants) to time: the BLAS first (the baseline), the tiles, the TMA tiles."""
    out = [("blas", dict(mm.BLAS), {}), ("tile_default", mm.tile_default(p, gpu), {})]
    out += [(name, tma(*t), consts) for name, t, consts in (TMA_DUAL if p["dual"] else TMA)]
    return [(n, c, k) for n, c, k in out if T.valid(c, p, gpu)]


def bench_shape(name: str, N: int, K: int, kw: dict, M: int, gen, rows: list, write, heat_ms: float = 0.0,
                meter=None) -> None:
    p = C.problem(M, N, K, "bfloat16", **kw)
    gpu = current_gpu()
    outs, ins = T.make_inputs(p, torch.device("cuda"), gen)
    mod = load_source(T.source(p))
    defaults = {k: getattr(mod, k) for k in ("_TMA_FLATTEN", "_TMA_DUAL_STACKED")}
    flops, _ = T.cost(p)
    expected, blas_us = None, None
    for variant, config, consts in candidates(p, gpu):
        for k, v in {**defaults, **consts}.items():
            setattr(mod, k, v)

        def run(config=config):
            mod.launch(*outs, *ins, **T.launch_kwargs(p), **config)

        row = {"shape": name, "M": M, "N": N, "K": K, "dual": p["dual"], "epilogue": p["epilogue"],
               "impl": config["IMPL"], "config": config, "variant": variant}
        try:
            errors = []
            for _ in range(3 if p["dual"] else 1):
                outs[0].fill_(float("nan"))
                run()
                torch.cuda.synchronize()
                if expected is None:
                    expected = outs[0].float().clone()
                errors.append(rel_error(outs[0], expected))
            row["errors"] = errors
            row["rel_err"] = max(errors)
            if row["rel_err"] > 2 * TOLERANCE[torch.bfloat16].rel:
                row["error"] = "wrong result"
            else:
                if heat_ms > 0:
                    row.update(_time_sustained(run, heat_ms, meter))
                    us = row["us"]
                else:
                    us = _time(run)
                blas_us = blas_us or us
                row.update(us=us, tflops=flops / us / 1e6, vs_blas=blas_us / us)
        except Exception as e:  # noqa: BLE001 - a config that fails to compile or launch is recorded
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
        write()
        tf = f"{row['tflops']:7.1f} TFLOP/s x{row['vs_blas']:.2f}" if "us" in row else row.get("error", "")
        if row.get("sm_mhz"):
            tf += f"  {row['sm_mhz']:.0f} MHz"
        if row.get("watts"):
            tf += f" {row['watts']:.0f} W {row['mj_per_launch']:.1f} mJ"
        print(f"{name:>8} IMPL={config['IMPL']} {variant:>12} {config['BLOCK_M']}x{config['BLOCK_N']}x"
              f"{config['BLOCK_K']} w{config['num_warps']} s{config['num_stages']}  err {row.get('rel_err', -1):.2e}"
              f"  {tf}", flush=True)
    for k, v in defaults.items():
        setattr(mod, k, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="path of the JSON record to write")
    ap.add_argument("--rows", default="2048", help="comma-separated M values")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES), help="comma-separated layer names")
    ap.add_argument("--heat-ms", type=float, default=0.0,
                    help="time each candidate after this many ms of sustained load (0: do_bench from a cool start)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_matmul_impls needs a CUDA GPU")
    meter, note = EnergyMeter.open(torch.device("cuda")) if args.heat_ms > 0 else (None, None)
    if note:
        print(note)
    rows: list = []
    record = {"kind": "matmul-impls", "command": " ".join(["python", *sys.argv]),
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "commit": git_commit(), "dtype": "bfloat16",
              "timer": f"event windows after {args.heat_ms:g} ms of load" if args.heat_ms > 0 else "do_bench median",
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        out.write_text(json.dumps(record, indent=1))

    gen = torch.Generator().manual_seed(0)
    wanted = args.shapes.split(",")
    for M in map(int, args.rows.split(",")):
        for name, N, K, kw in SHAPES:
            if name in wanted:
                bench_shape(name, N, K, kw, M, gen, rows, write, args.heat_ms, meter)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

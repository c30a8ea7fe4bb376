"""Where a prefill's GPU time goes, per engine: the GPU kernels of a few timed prefills (torch profiler, CUDA
graph replays included), grouped by kernel name, with the time per prefill and the share of the total; and
per prefill its CUDA-event time (as `ds4c bench` times it) and the span from its first kernel's start to its
last kernel's end, with the part of that span in which no kernel ran.

    python bench/profile_prefill.py --config llama-3.1-8b --engines ds4c,inductor --out F.json

Run on the GPU; the same model object and weights serve every engine, as in `ds4c bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from functools import partial

import torch
from torch.profiler import ProfilerActivity, profile

from ds4c.benchmark import measure
from ds4c.benchmark.engines import BuildOptions, build
from ds4c.benchmark.record import git_commit, triton_version
from ds4c.benchmark.runner import BenchSpec, make_inputs, make_model
from ds4c.models.llama import reset_cache


def kernel_table(prof, calls: int) -> list[dict]:
    """[{name, us_per_call, count_per_call}] of the GPU kernels in prof, longest first."""
    total, count = defaultdict(float), defaultdict(int)
    for ev in prof.events():
        if measure.is_kernel(ev):
            total[ev.name] += ev.time_range.elapsed_us()
            count[ev.name] += 1
    rows = [{"name": n, "us_per_call": t / calls, "count_per_call": count[n] / calls} for n, t in total.items()]
    return sorted(rows, key=lambda r: -r["us_per_call"])


def spans(prof, calls: int) -> list[dict]:
    """Per call (calls separated by a host sync, so by the widest gaps between kernels): the time from its
    first kernel's start to its last kernel's end, and how much of it no kernel ran."""
    evs = sorted((ev.time_range.start, ev.time_range.end) for ev in prof.events() if measure.is_kernel(ev))
    if not evs:
        return []
    gaps = sorted(range(1, len(evs)), key=lambda i: evs[i][0] - evs[i - 1][1])[len(evs) - calls:]
    cuts = [0] + sorted(gaps) + [len(evs)]
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        span = evs[b - 1][1] - evs[a][0]
        busy = sum(e - s for s, e in evs[a:b])
        out.append({"span_us": span, "idle_us": span - busy, "kernels": b - a})
    return out


def profile_engine(name: str, model, inputs, spec: BenchSpec, calls: int, device: torch.device) -> dict:
    eng = build(name, model, spec.prompt_len, spec.build)
    with torch.no_grad():
        for _ in range(3):  # compile, record, warm
            reset_cache(model)
            eng.prefill(inputs.tokens, inputs.last)
        measure.sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            # each from an idle device, timed by events as `ds4c bench` times it
            wall, _ = measure.timed_calls(partial(eng.prefill, inputs.tokens, inputs.last), calls, device)
    rows = kernel_table(prof, calls)
    gpu_us = sum(r["us_per_call"] for r in rows)
    for r in rows:
        r["share"] = r["us_per_call"] / gpu_us
    del eng
    measure.free_memory(device)
    return {"gpu_us_per_prefill": gpu_us, "kernels_per_prefill": sum(r["count_per_call"] for r in rows),
            "event_ms_per_prefill": wall, "spans": spans(prof, calls), "kernels": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama-3.1-8b")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--engines", default="ds4c,inductor")
    ap.add_argument("--db", default=None, help="ds4c tuning DB path or URL")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = BenchSpec(config=args.config, prompt_len=args.prompt_len, decode_len=128,
                     build=BuildOptions(db=args.db, tune_trials=0))
    cfg, model = make_model(spec, device)
    inputs = make_inputs(cfg.vocab_size, spec.prompt_len, spec.decode_len, spec.seed, device)
    rec = {"kind": "prefill-profile", "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "driver": measure.driver_version(), "torch": torch.__version__, "triton": triton_version(),
           "commit": git_commit(), "command": " ".join(sys.argv), "workload": {"config": args.config,
           "prompt_len": args.prompt_len, "dtype": "bfloat16", "batch": 1}, "engines": {}}
    for name in args.engines.split(","):
        try:
            rec["engines"][name] = res = profile_engine(name, model, inputs, spec, args.calls, device)
        except Exception as e:  # one engine failing leaves the others
            rec["engines"][name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        print(f"== {name}: {res['gpu_us_per_prefill'] / 1000:.2f} ms of kernels, "
              f"{res['kernels_per_prefill']:.0f} kernels per prefill; events "
              + " ".join(f"{w:.2f}" for w in res["event_ms_per_prefill"]) + " ms; first to last kernel "
              + " ".join(f"{s['span_us'] / 1e3:.2f} ({s['idle_us'] / 1e3:.2f} idle)" for s in res["spans"]) + " ms")
        for r in res["kernels"][:args.top]:
            print(f"{r['us_per_call']:9.1f} us {r['share']:6.1%} x{r['count_per_call']:5.0f}  {r['name'][:110]}")
        with open(args.out, "w") as f:
            json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

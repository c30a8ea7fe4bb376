"""How long a prefill takes to start: ds4c's prefill replayed as one CUDA graph against two graphs (its first
`head` kernel launches, then the rest; runtime.llm.PREFILL_HEAD_KERNELS), timed as `ds4c bench` times time to
first token (CUDA events around the call, from an idle device), with the host time of the call beside it.
Variants take turns, so the board's heating spreads over all of them alike.

    python bench/prefill_launch.py --config llama-3.1-8b --heads 0,1,2,4,8,16 --rounds 15 --out F.json

Run on the GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ds4c.benchmark import measure
from ds4c.benchmark.engines import BuildOptions, build
from ds4c.benchmark.record import git_commit, triton_version
from ds4c.benchmark.runner import BenchSpec, make_inputs, make_model
from ds4c.runtime.graphs import Replay
from ds4c.runtime.llm import _stages


def timed_call(fn, device) -> tuple[float, float]:
    """(event ms, host ms) of one call of fn from an idle device."""
    measure.sync(device)
    st = measure.Stamps(device)
    t0 = time.perf_counter()
    st.mark()
    fn()
    host = (time.perf_counter() - t0) * 1e3
    st.mark()
    return st.total_ms(), host


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama-3.1-8b")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--db", default=None, help="ds4c tuning DB path or URL")
    ap.add_argument("--heads", default="0,1,2,4,8,16", help="kernels in the first graph; 0: one graph")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    spec = BenchSpec(config=args.config, prompt_len=args.prompt_len, decode_len=1,
                     build=BuildOptions(db=args.db, tune_trials=0))
    cfg, model = make_model(spec, device)
    inputs = make_inputs(cfg.vocab_size, spec.prompt_len, spec.decode_len, spec.seed, device)
    eng = build("ds4c", model, spec.prompt_len, spec.build)
    exe = eng.handle.runner._prefill
    heads = [int(h) for h in args.heads.split(",")]
    replays = {h: Replay(_stages(exe, h) if h else exe, inputs.tokens, inputs.last) for h in heads}
    want = replays[heads[0]](inputs.tokens, inputs.last)[0].float().clone()
    times: dict[int, list] = {h: [] for h in heads}
    with torch.no_grad():
        for h in heads:  # same logits whatever the split; one warm call each
            got = replays[h](inputs.tokens, inputs.last)[0].float()
            assert torch.equal(got, want), f"head {h}: logits differ from one graph's"
        for _ in range(args.rounds):
            for h in heads:
                times[h].append(timed_call(lambda h=h: replays[h](inputs.tokens, inputs.last), device))
    rows = []
    for h in heads:
        ev, host = [t[0] for t in times[h]], [t[1] for t in times[h]]
        rows.append({"head_kernels": h, "steps_in_head": exe.head_cut(h) if h else len(exe.steps),
                     "event_ms_median": statistics.median(ev), "event_ms_p10": measure.quantile(ev, 0.1),
                     "event_ms_p90": measure.quantile(ev, 0.9), "host_ms_median": statistics.median(host),
                     "event_ms": ev, "host_ms": host})
        print(f"head {h:3d}: event {rows[-1]['event_ms_median']:.3f} ms (p10 {rows[-1]['event_ms_p10']:.3f}, "
              f"p90 {rows[-1]['event_ms_p90']:.3f}), host {rows[-1]['host_ms_median']:.3f} ms")
    rec = {"kind": "prefill-launch", "gpu": torch.cuda.get_device_name(device), "driver": measure.driver_version(),
           "torch": torch.__version__, "triton": triton_version(), "commit": git_commit(),
           "command": " ".join(sys.argv), "workload": {"config": args.config, "prompt_len": args.prompt_len,
           "dtype": "bfloat16", "batch": 1}, "kernels": sum(s.kind == "kernel" for s in exe.gp.steps),
           "rounds": args.rounds, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

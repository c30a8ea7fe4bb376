"""Host time of a plan's steps without the GPU (a CPU script): every kernel launch a no-op, every tensor on
the meta device, so what is left is the executor and its ATen view ops. It tells how long a graph takes to
issue when it is not replayed as a CUDA graph, before any kernel launcher's own cost.

    python bench/host_time.py --out bench/results/host-time-cpu.json llama-3.2-1b llama-3.1-8b
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
import types
from pathlib import Path

import torch

from ds4c.benchmark.record import git_commit
from ds4c.cli import load_model_source
from ds4c.compiler import Options
from ds4c.llm import compile_llm
from ds4c.runtime.llm import LLMRunner


def host_ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(config: str, prefill_len: int, repeats: int) -> list[dict]:
    model, _ = load_model_source(config, 4096, torch.bfloat16)
    compiled = compile_llm(model, prefill_len=prefill_len, options=Options(use_db=False), bind=False)
    noop = types.SimpleNamespace(launch=lambda *a, **k: None)
    runner = LLMRunner(compiled.plan, {kid: noop for kid in compiled.plan.kernels},
                       {k: p.detach() for k, p in model.named_parameters()}, compiled.saved_state,
                       torch.device("meta"), False, {f"buffer:{k}": b for k, b in model.named_buffers()})
    meta = torch.device("meta")
    inputs = {"prefill": (torch.zeros(1, prefill_len, dtype=torch.long, device=meta),
                          torch.tensor([prefill_len - 1], device=meta)),
              "decode": (torch.zeros(1, 1, dtype=torch.long, device=meta), torch.tensor([prefill_len], device=meta))}
    rows = []
    for graph, exe in (("prefill", runner._prefill), ("decode", runner._decode)):
        steps = compiled.plan.graphs[graph].steps
        ms = host_ms(lambda e=exe, a=inputs[graph]: e(*a), repeats)
        rows.append({"config": config, "graph": graph, "prefill_len": prefill_len, "steps": len(steps),
                     "kernels": sum(s.kind == "kernel" for s in steps), "host_ms": ms,
                     "host_us_per_step": ms * 1e3 / len(steps)})
        print(f"{config} {graph}: {len(steps)} steps ({rows[-1]['kernels']} kernels), {ms:.2f} ms")
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    record = {"kind": "host-time", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "commit": git_commit(), "cpu": cpu_name(), "cores": os.cpu_count(),
              "python": platform.python_version(), "torch": torch.__version__,
              "what": "median host ms to issue one graph: kernel launches no-ops, tensors on the meta device",
              "rows": [r for c in args.configs for r in measure(c, args.prefill_len, args.repeats)]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

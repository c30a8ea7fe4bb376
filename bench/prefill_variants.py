"""Time whole ds4c prefills under variants of the dual-weight (gate/up with SwiGLU) TMA tiles, interleaved in
blocks so that every variant sees the same thermal history.

A microbenchmark of one GEMM runs from its own thermal state; a variant that wins there may not win inside
a prefill, where the board sits at its clock limit. Each variant here is one ds4c engine over the same model
and weights, built while the variant's module constants are set (its CUDA graph keeps them), then the
engines take turns: --rounds rounds of --block prefills each, every prefill from an idle device as
`ds4c bench` times them.

    python bench/prefill_variants.py --config llama-3.1-8b \
        --arms tuned,flatten:flatten=1,flatten-s3:flatten=1:stages=3 --out F.json

An arm is NAME[:flatten=0|1][:stages=N]: flatten sets the dual module's _TMA_FLATTEN, stages replaces the
tuned num_stages of its TMA launch; an arm with neither runs the plan as compiled. Run on the GPU.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
from functools import partial

import torch

from ds4c.benchmark import measure
from ds4c.benchmark.record import git_commit, triton_version
from ds4c.benchmark.runner import BenchSpec, make_inputs, make_model
from ds4c.compiler import Options
from ds4c.llm import compile_llm
from ds4c.runtime import loader


def parse_arm(text: str) -> tuple[str, dict]:
    name, *parts = text.split(":")
    arm = {}
    for p in parts:
        key, _, value = p.partition("=")
        if key not in ("flatten", "stages") or not value.isdigit():
            raise SystemExit(f"bad arm setting {p!r} in {text!r} (flatten=0|1, stages=N)")
        arm[key] = int(value)
    return name, arm


def dual_tma_modules() -> list:
    """The loaded matmul modules with a TMA launcher whose product takes two weights."""
    return [mod for mod in loader._LOADED.values()
            if hasattr(mod, "_launch_tma") and "w2" in inspect.signature(mod.launch).parameters]


def apply_arm(arm: dict) -> None:
    """Set the dual modules' constants for the next engine's capture (the modules are shared by every plan
    that loads the same source); each module keeps what it had beside, for the arms without a setting."""
    for mod in dual_tma_modules():
        if not hasattr(mod, "_variant_orig"):
            mod._variant_orig = (mod._launch_tma, mod._TMA_FLATTEN)
        orig, flatten = mod._variant_orig
        mod._TMA_FLATTEN = bool(arm["flatten"]) if "flatten" in arm else flatten
        stages = arm.get("stages")

        def launch(*args, _orig=orig, _stages=stages, **kwargs):
            if _stages is not None:
                kwargs["num_stages"] = _stages
            return _orig(*args, **kwargs)

        mod._launch_tma = launch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama-3.1-8b")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--arms", default="tuned,flatten:flatten=1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=20, help="prefills per arm per round")
    ap.add_argument("--db", default=None, help="ds4c tuning DB URL (default: $DS4C_DB)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    arms = [parse_arm(a) for a in args.arms.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = BenchSpec(config=args.config, prompt_len=args.prompt_len, decode_len=8)
    cfg, model = make_model(spec, device)
    inputs = make_inputs(cfg.vocab_size, spec.prompt_len, spec.decode_len, spec.seed, device)
    meter, note = measure.EnergyMeter.open(device)
    options = Options(db_url=args.db, use_cache=False)
    engines, reference = {}, None
    with torch.no_grad():
        for name, arm in arms:
            apply_arm(arm)  # modules loaded by earlier compiles
            compiled = compile_llm(model, prefill_len=args.prompt_len, options=options)
            apply_arm(arm)  # and by this one; the capture below bakes the setting in
            for _ in range(3):  # compile, record, warm
                logits = compiled.prefill(inputs.tokens, inputs.last)
            logits = logits.float()
            reference = logits if reference is None else reference
            err = ((logits - reference).norm() / reference.norm()).item()
            engines[name] = compiled
            print(f"built {name} {arm}: logits vs first arm {err:.2e}", flush=True)
        apply_arm({})
        rows = {name: [] for name, _ in arms}
        for r in range(args.rounds):
            for name, _ in arms:
                eng = engines[name]
                with measure.ClockSampler(meter) as clock:
                    e0 = measure.energy_start(meter)
                    times, _ = measure.timed_calls(partial(eng.prefill, inputs.tokens, inputs.last), args.block,
                                                   device)
                    joules, watts = measure.energy_since(meter, e0, device, args.block)
                row = {"round": r, "median_ms": statistics.median(times), "ms": times, "j_per_prefill": joules,
                       "watts": watts, "sm_mhz": clock.mean_mhz, "temp_c": clock.mean_temp_c}
                rows[name].append(row)
                print(f"round {r} {name:12s} median {row['median_ms']:.2f} ms  {watts or 0:.0f} W "
                      f"{clock.mean_mhz or 0:.0f} MHz {clock.mean_temp_c or 0:.0f} C", flush=True)
    summary = {name: {"median_ms": statistics.median([t for row in rows[name] for t in row["ms"]]),
                      "block_medians_ms": [row["median_ms"] for row in rows[name]], "setting": arm}
               for name, arm in arms}
    for name, s in summary.items():
        print(f"{name:12s} median {s['median_ms']:.2f} ms over {args.rounds * args.block} prefills; blocks "
              + " ".join(f"{m:.2f}" for m in s["block_medians_ms"]))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rec = {"kind": "prefill-variants", "gpu": gpu, "driver": measure.driver_version(),
           "torch": torch.__version__, "triton": triton_version(), "commit": git_commit(),
           "command": " ".join(sys.argv), "workload": {"config": args.config, "prompt_len": args.prompt_len,
           "dtype": "bfloat16", "batch": 1}, "meter_note": note, "summary": summary, "blocks": rows}
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

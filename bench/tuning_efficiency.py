"""How many trials the Optuna search needs, against the exhaustive grid of valid configs (a GPU script).

For each real shape (Llama-3.1-8B and Qwen2.5-7B: decode GEMV via "gemv", prefill GEMM via "matmul",
prefill attention via "flash_attention") it
  1. times every valid config once (exhaustive; candidates pre-compiled by a process pool, each checked
     against the reference before timing) and the template's default config;
  2. replays the Optuna search with several seeds against that table: the tuner runs unchanged, but its
     measure step looks up the time measured in (1) instead of launching (recorded as "replay": honest
     about search efficiency, free of timing noise between runs);
  3. runs one live Optuna search per shape (real compile, check and timing) to confirm the replay.
It reports per shape the exhaustive trials, best time and wall time, the default's time, and the median over
seeds of the number of measured trials Optuna needed to get within 3% of the exhaustive best.

    python bench/tuning_efficiency.py --out bench/results/tuning-efficiency-h200.json [--seeds 5]
        [--live-trials 64] [--only gemv] [--limit 0] [--full-space]
    python bench/tuning_efficiency.py --replay RECORD --where IMPL=0 --out ...   (no GPU: replay a record's
        tables, e.g. the Triton tiles alone)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import triton

from ds4c.benchmark.record import git_commit
from ds4c.device import H200, current_gpu
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.kernel_templates.base import SearchSpace
from ds4c.tuning_db.db import TuningDB
from ds4c.tuning_db.key import canonical_json
from ds4c.tuning_db.measure import Measurement, measure, precompile
from ds4c.tuning_db.tuner import FINISHED, TuneSettings, tune, valid_configs


def _attn(hq: int, hkv: int, t: int) -> dict:
    return {"B": 1, "Hq": hq, "Hkv": hkv, "T": t, "S": t, "D": 128, "dtype": "bfloat16", "causal": True,
            "scale": 128 ** -0.5}


# (name, template, problem): Llama-3.1-8B (4096 hidden, 14336 FFN, 32/8 heads) and Qwen2.5-7B (3584 hidden,
# 18944 FFN, 28/4 heads, qkv bias) linear layers and attention.
SHAPES = [
    ("llama8b-decode-qkv", "gemv", C.problem(1, 6144, 4096)),
    ("llama8b-decode-gate_up", "gemv", C.problem(1, 14336, 4096, dual=True, epilogue=C.SWIGLU)),
    ("llama8b-decode-down", "gemv", C.problem(1, 4096, 14336)),
    ("qwen7b-decode-qkv", "gemv", C.problem(1, 4608, 3584, bias=True, epilogue=("add", "acc", "bias"))),
    ("qwen7b-decode-down", "gemv", C.problem(1, 3584, 18944)),
    ("llama8b-prefill-qkv", "matmul", C.problem(2048, 6144, 4096)),
    ("qwen7b-prefill-down", "matmul", C.problem(2048, 3584, 18944)),
    ("llama8b-prefill-attention", "flash_attention", _attn(32, 8, 2048)),
    ("qwen7b-prefill-attention", "flash_attention", _attn(28, 4, 2048)),
]


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


# Spaces too large to time exhaustively within one device call (the matmul grid holds ~2600 valid configs
# for a prefill GEMM) are searched, exhaustively and by Optuna alike, over this sub-grid of the usual tiles.
SUBSPACES = {
    "matmul": SearchSpace((
        ("BLOCK_M", (64, 128, 256)),
        ("BLOCK_N", (64, 128, 256)),
        ("BLOCK_K", (32, 64, 128)),
        ("GROUP_M", (1, 8)),
        ("num_warps", (4, 8)),
        ("num_stages", (2, 3, 4)),
        ("IMPL", (0, 1)),
    )),
}


def exhaustive(template, problem, gpu, configs, pool) -> tuple[dict, float]:
    """{config json: Measurement} over configs, and the wall seconds it took (compile + check + time)."""
    t0 = time.perf_counter()
    n = len(configs)
    errors = list(pool.map(precompile, [template] * n, [problem] * n, configs, chunksize=1))
    table = {}
    for c, err in zip(configs, errors, strict=True):
        table[canonical_json(c)] = (Measurement(False, math.inf, err) if err
                                    else measure(template, problem, c, gpu))
    return table, time.perf_counter() - t0


def trials_to_within(db: TuningDB, key: str, target: float) -> int | None:
    """The number of measured trials, in order, until one came within target (None: never)."""
    done = sorted((t for t in db.trials(key, FINISHED) if t.user_attrs.get("counted")), key=lambda t: t.number)
    for i, t in enumerate(done, 1):
        if t.value is not None and t.value <= target:
            return i
    return None


def search(template, problem, gpu, settings, measure_fn=None) -> tuple[object, TuningDB]:
    tmp = tempfile.mkdtemp(prefix="ds4c-tuning-eff-")
    db = TuningDB(f"sqlite:///{tmp}/search.db")
    return tune(template, problem, db, gpu, settings, measure_fn=measure_fn), db


@dataclasses.dataclass(frozen=True)
class _InSpace:
    """A validity predicate restricted to a sub-grid; a module-level class so compile workers can unpickle it."""
    space: SearchSpace
    valid: object

    def __call__(self, c, p, g) -> bool:
        return self.space.contains(c) and self.valid(c, p, g)


def on_subspace(template, space: SearchSpace):
    """template searching only space (a sub-grid of its own space), for the exhaustive pass and Optuna."""
    return dataclasses.replace(template, space=space, valid=_InSpace(space, template.valid))


def replay_search(template, problem, gpu, table: dict, seeds: int, sampler: str, target: float) -> list:
    """Per seed, the measured trials the tuner (unchanged) needs to come within target, when its measure
    step looks the time up in table instead of launching; the search covers exactly the configs in table."""

    def replay(t, p, c, g, **kw) -> Measurement:
        return table.get(canonical_json(c), Measurement(False, math.inf, "not in the exhaustive table"))

    timed = dataclasses.replace(template, valid=lambda c, p, g: canonical_json(c) in table)
    per_seed = []
    for seed in range(seeds):
        settings = TuneSettings(trials=len(table), sampler=sampler, seed=seed, compile_workers=0,
                                target_us=target)
        r, db = search(timed, problem, gpu, settings, replay)
        per_seed.append(trials_to_within(db, r.key, target))
    return per_seed


def run_shape(name, tname, problem, gpu, args, pool) -> dict:
    template = get(tname)
    full = template.space
    if tname in SUBSPACES and not args.full_space:
        template = on_subspace(template, SUBSPACES[tname])
    configs = valid_configs(template, problem, gpu)
    if args.limit:
        configs = configs[: args.limit]
    log(f"{name}: timing {len(configs)} configs")
    table, wall = exhaustive(template, problem, gpu, configs, pool)
    log(f"{name}: exhaustive pass done in {wall:.0f} s")
    ok = {k: m.us for k, m in table.items() if m.ok}
    best_key = min(ok, key=ok.get) if ok else None
    best = ok[best_key] if ok else math.inf
    default = template.default(problem, gpu)
    dm = measure(template, problem, default, gpu)
    target = best * 1.03
    per_seed = replay_search(template, problem, gpu, table, args.seeds, args.sampler, target)
    log(f"{name}: replays done, trials to within 3%: {per_seed}")
    t0 = time.perf_counter()
    live, ldb = search(template, problem, gpu, TuneSettings(trials=args.live_trials, sampler=args.sampler,
                                                            seed=1234))
    live_wall = time.perf_counter() - t0
    log(f"{name}: live search done in {live_wall:.0f} s")
    reached = [n for n in per_seed if n is not None]
    return {
        "name": name, "template": tname, "problem": problem, "space_size": template.space.size(),
        "space": "the template's own" if template.space == full else {
            "sub_grid": dict(template.space.params), "full_space_size": full.size(),
            "why": "the full grid takes longer than one device call to time; both searches use this sub-grid"},
        "exhaustive_trials": len(configs), "exhaustive_failed": len(configs) - len(ok),
        "exhaustive_best_us": best, "exhaustive_best_config": json.loads(best_key) if best_key else None,
        "exhaustive_wall_s": wall, "default_config": default, "default_us": dm.us if dm.ok else None,
        "default_error": dm.reason or None, "seeds": args.seeds, "sampler": args.sampler,
        "optuna_trials_to_3pct": per_seed,
        "optuna_median_trials_to_3pct": statistics.median(reached) if len(reached) == len(per_seed) else None,
        "optuna_mode": "replay of the exhaustive timing table (tuner unchanged, measure step looked up)",
        # every timed config and its median (null: failed), so heuristic defaults can be fitted to the data
        "table": [[json.loads(k), m.us if m.ok else None] for k, m in table.items()],
        "live": {"trials": live.measured, "best_us": live.best_us, "best_config": live.best_config,
                 "trials_to_3pct": trials_to_within(ldb, live.key, target), "wall_s": live_wall,
                 "stop": live.stop},
    }


# GPUs whose records can be replayed here (validity rules and defaults depend on the GPU's facts)
KNOWN_GPUS = {H200.name: H200}


def _where(text: str) -> dict:
    """'IMPL=0,num_warps=4' -> {'IMPL': 0, 'num_warps': 4}"""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        out[name.strip()] = int(value)
    return out


def replay_record(path: Path, where: dict, seeds: int, sampler: str) -> dict:
    """Re-run the Optuna replay over a record's timing tables, restricted to the configs matching where
    (no GPU needed: the times are the ones measured on the record's GPU)."""
    src = json.loads(path.read_text())
    gpu = KNOWN_GPUS.get(src["gpu"])
    if gpu is None:
        raise SystemExit(f"cannot replay a record of {src['gpu']!r}: known GPUs are {', '.join(KNOWN_GPUS)}")
    record = {"kind": "tuning-efficiency", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "commit": git_commit(), "gpu": src["gpu"], "torch": src["torch"], "triton": src["triton"],
              "replay_of": {"record": path.name, "commit": src["commit"], "where": where}, "shapes": []}
    for row in src["shapes"]:
        if not row.get("table"):
            continue
        template = get(row["template"])
        if isinstance(row.get("space"), dict):
            sub = SearchSpace(tuple((k, tuple(v)) for k, v in row["space"]["sub_grid"].items()))
            template = on_subspace(template, sub)
        table = {canonical_json(c): Measurement(True, us) if us is not None else
                 Measurement(False, math.inf, "failed on the device")
                 for c, us in row["table"] if all(c.get(k) == v for k, v in where.items())}
        ok = {k: m.us for k, m in table.items() if m.ok}
        if not ok:
            continue
        best_key = min(ok, key=ok.get)
        problem = row["problem"]
        per_seed = replay_search(template, problem, gpu, table, seeds, sampler, ok[best_key] * 1.03)
        log(f"{row['name']} where {where}: {len(table)} configs, trials to within 3%: {per_seed}")
        default = canonical_json(template.default(problem, gpu))
        reached = [n for n in per_seed if n is not None]
        record["shapes"].append({
            "name": row["name"], "template": row["template"], "problem": problem, "where": where,
            "exhaustive_trials": len(table), "exhaustive_best_us": ok[best_key],
            "exhaustive_best_config": json.loads(best_key),
            "default_us": ok.get(default), "default_in_table": default in table,
            "seeds": seeds, "sampler": sampler, "optuna_trials_to_3pct": per_seed,
            "optuna_median_trials_to_3pct": statistics.median(reached) if len(reached) == len(per_seed) else None,
            "optuna_mode": "offline replay of the record's timing table, restricted to the configs matching "
                           "where (tuner unchanged, measure step looked up)"})
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--live-trials", type=int, default=64)
    ap.add_argument("--only", default="",
                    help="run only shapes whose name contains, or template is, one of these (comma-separated)")
    ap.add_argument("--limit", type=int, default=0, help="time only the first N valid configs (smoke runs)")
    ap.add_argument("--full-space", action="store_true",
                    help="search the templates' whole spaces, also where SUBSPACES names a sub-grid")
    ap.add_argument("--compile-workers", type=int, default=8)
    ap.add_argument("--replay", type=Path, metavar="RECORD",
                    help="no GPU: replay the Optuna search over RECORD's timing tables instead of measuring")
    ap.add_argument("--where", default="", help="with --replay: only configs matching, e.g. IMPL=0")
    args = ap.parse_args()
    if args.replay:
        record = replay_record(args.replay, _where(args.where), args.seeds, args.sampler)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1, default=str))
        return
    gpu = current_gpu()
    only = args.only.split(",")
    shapes = [s for s in SHAPES if any(o in s[0] or o == s[1] for o in only)]
    record = {"kind": "tuning-efficiency", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "commit": git_commit(), "gpu": gpu.name, "torch": torch.__version__, "triton": triton.__version__,
              "shapes": []}
    with ProcessPoolExecutor(args.compile_workers, mp_context=get_context("spawn")) as pool:
        for name, tname, problem in shapes:
            try:
                row = run_shape(name, tname, problem, gpu, args, pool)
            except Exception as e:  # one broken shape is recorded, the run goes on
                row = {"name": name, "template": tname, "error": f"{type(e).__name__}: {e}"[:500]}
            record["shapes"].append(row)
            print(json.dumps({k: row.get(k) for k in ("name", "exhaustive_trials", "exhaustive_best_us",
                                                        "default_us", "optuna_median_trials_to_3pct")}))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Warm compile with a populated tuning database, through the CLI as a user runs it (a GPU script).

    python bench/warm_compile.py --out F [--config llama-3.1-8b] [--prefill-len 2048] [--max-seq-len 4096]
        [--db URL] [--tune-trials 16 --tune-seconds 10] [--workers 1]

Steps, each a fresh `ds4c` process:
  1. (--tune-trials N) `ds4c tune CONFIG` fills the database: N measured trials per kernel problem;
  2. cold: `ds4c compile` with an empty plan cache (capture, passes, lowering, database lookups);
  3. warm: the same command again (plan cache hit; every kernel's config asked of the database again);
  4. round trip: `ds4c db export`, `ds4c db import` into a fresh SQLite file, `ds4c compile` against it.
The plans of 2, 3 and 4 must be identical (plan.json and every kernel source, byte for byte).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import triton

from ds4c.benchmark.record import git_commit
from ds4c.device import current_gpu


def ds4c(args: list[str], env: dict) -> tuple[float, str]:
    """(wall seconds, output) of one ds4c command; raises with its output when it fails."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "ds4c.cli", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"ds4c {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return wall, p.stdout + p.stderr


def plan_digest(plan_dir: Path) -> str:
    """sha256 over every file of a plan directory but its metadata of when and from where."""
    h = hashlib.sha256()
    for f in sorted(plan_dir.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "plan.json":
                plan = json.loads(data)
                plan.get("meta", {}).pop("report", None)  # compile times and cache notes differ by run
                data = json.dumps(plan, sort_keys=True).encode()
            h.update(f.relative_to(plan_dir).as_posix().encode() + b"\0" + data)
    return h.hexdigest()


def reported_s(out: str) -> float | None:
    m = re.search(r"\) in ([0-9.]+) s", out)
    return float(m.group(1)) if m else None


def configs_of(out: str) -> str:
    m = re.search(r"configs (\{[^}]*\})", out)
    return m.group(1) if m else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default="llama-3.1-8b")
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--max-seq-len", type=int, default=4096)
    ap.add_argument("--db", default=None, help="tuning DB URL (default: a fresh SQLite file)")
    ap.add_argument("--tune-trials", type=int, default=0)
    ap.add_argument("--tune-seconds", type=float, default=None, help="tuning budget per kernel problem")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ds4c-warm-"))
    db = args.db or f"sqlite:///{work / 'tuning.db'}"
    env = {**os.environ, "DS4C_CACHE_DIR": str(work / "cache")}
    common = [args.config, "--prefill-len", str(args.prefill_len), "--max-seq-len", str(args.max_seq_len)]
    record = {"kind": "warm-compile", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "commit": git_commit(), "gpu": current_gpu().name, "torch": torch.__version__,
              "triton": triton.__version__, "config": args.config, "prefill_len": args.prefill_len,
              "max_seq_len": args.max_seq_len}
    if args.tune_trials:
        wall, out = ds4c(["tune", args.config, "--max-tokens", str(args.prefill_len),
                          "--max-seq-len", str(args.max_seq_len), "--db", db,
                          "--trials", str(args.tune_trials), "--workers", str(args.workers),
                          *(["--seconds", str(args.tune_seconds)] if args.tune_seconds else [])], env)
        record["tune"] = {"trials_per_problem": args.tune_trials, "seconds_per_problem": args.tune_seconds,
                          "workers": args.workers, "wall_s": wall,
                          "tail": out.strip().splitlines()[-3:]}
    wall, out = ds4c(["db", "--db", db, "ls"], env)
    record["db_entries"] = max(0, len([ln for ln in out.splitlines() if ln.strip()]) - 1)
    runs = {}
    for name in ("cold", "warm"):
        wall, out = ds4c(["compile", *common, "-o", str(work / name), "--db", db], env)
        runs[name] = {"wall_s": wall, "reported_s": reported_s(out), "configs": configs_of(out),
                      "digest": plan_digest(work / name)}
    export = work / "export.json"
    ds4c(["db", "--db", db, "export", str(export)], env)
    fresh = f"sqlite:///{work / 'fresh.db'}"
    _, imp = ds4c(["db", "--db", fresh, "import", str(export)], env)
    wall, out = ds4c(["compile", *common, "-o", str(work / "imported"), "--db", fresh], env)
    runs["imported"] = {"wall_s": wall, "reported_s": reported_s(out), "configs": configs_of(out),
                        "digest": plan_digest(work / "imported"), "import": imp.strip().splitlines()[-1:]}
    record.update({
        "cold_s": runs["cold"]["reported_s"], "warm_s": runs["warm"]["reported_s"],
        "plan_identical": runs["cold"]["digest"] == runs["warm"]["digest"],
        "imported_plan_identical": runs["cold"]["digest"] == runs["imported"]["digest"],
        "runs": runs,
        "notes": ["reported_s: the time `ds4c compile` prints (model construction on the meta device, capture, "
                  "passes, lowering, database lookups); wall_s adds starting Python and importing torch",
                  "the warm and imported runs share the cold run's plan cache (DS4C_CACHE_DIR)"],
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("cold_s", "warm_s", "plan_identical", "imported_plan_identical",
                                             "db_entries")}))


if __name__ == "__main__":
    main()

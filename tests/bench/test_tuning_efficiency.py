"""bench/tuning_efficiency.py --replay: the Optuna search replayed over a recorded timing table, no GPU."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ds4c.device import H200
from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.tuning_db.tuner import valid_configs


def _record(tmp_path: Path, gpu: str, table: list) -> Path:
    rec = {"kind": "tuning-efficiency", "commit": "abc", "gpu": gpu, "torch": "t", "triton": "t",
           "shapes": [{"name": "toy", "template": "gemv", "problem": C.problem(1, 96, 256), "space": "own",
                       "table": table}, {"name": "broken", "template": "gemv", "error": "x"}]}
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    return path


def test_replay_restricted_to_where(tmp_path, bench_script):
    te = bench_script("tuning_efficiency")
    rng = random.Random()
    configs = valid_configs(get("gemv"), C.problem(1, 96, 256), H200)
    table = [[c, rng.uniform(10, 50)] for c in configs]
    table[rng.randrange(len(table))][1] = None  # a config that failed on the device
    warps = rng.choice(sorted({c["num_warps"] for c in configs}))
    path = _record(tmp_path, H200.name, table)
    rec = te.replay_record(path, te._where(f"num_warps={warps}"), seeds=2, sampler="tpe")
    (row,) = rec["shapes"]
    kept = [(c, us) for c, us in table if c["num_warps"] == warps]
    assert row["exhaustive_trials"] == len(kept) and row["where"] == {"num_warps": warps}
    assert row["exhaustive_best_us"] == min(us for _, us in kept if us is not None)
    assert row["exhaustive_best_config"]["num_warps"] == warps
    assert all(n is not None and 1 <= n <= len(kept) for n in row["optuna_trials_to_3pct"])
    assert rec["replay_of"] == {"record": "rec.json", "commit": "abc", "where": {"num_warps": warps}}


def test_replay_refuses_an_unknown_gpu(tmp_path, bench_script):
    te = bench_script("tuning_efficiency")
    with pytest.raises(SystemExit, match="known GPUs"):
        te.replay_record(_record(tmp_path, "Some GPU", []), {}, seeds=1, sampler="tpe")

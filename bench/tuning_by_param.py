"""What one config parameter is worth, from the trials a tuning run measured (no GPU needed to read them):
for each study of a template in a tuning database, the best time at each value of the parameter, with the
config that gave it.

    python bench/tuning_by_param.py --db sqlite:///tuning.db --template gemv --param num_stages --out F.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from optuna.trial import TrialState

from ds4c.benchmark.record import git_commit
from ds4c.tuning_db.db import TuningDB


def best_by_param(db: TuningDB, template: str, param: str) -> list[dict]:
    rows = []
    for _, key, fields, _ in db.studies():
        if fields is None or fields.template != template:
            continue
        best: dict[str, tuple[float, dict]] = {}
        done = db.trials(key, (TrialState.COMPLETE,))
        for t in done:
            config = t.user_attrs.get("config")
            if not isinstance(config, dict) or t.value is None or not math.isfinite(t.value):
                continue
            v = str(config.get(param))
            if v not in best or t.value < best[v][0]:
                best[v] = (t.value, config)
        rows.append({"key": key, "gpu": fields.gpu, "torch": fields.torch, "triton": fields.triton,
                     "source_hash": fields.source_hash, "trials": len(done),
                     "problem": fields.problem,
                     "best_us": {v: us for v, (us, _) in sorted(best.items())},
                     "best_config": {v: c for v, (_, c) in sorted(best.items())}})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--template", default="gemv")
    ap.add_argument("--param", default="num_stages")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = best_by_param(TuningDB(args.db), args.template, args.param)
    for r in rows:
        p = r["problem"]
        shape = " ".join(f"{k}={p[k]}" for k in ("M", "N", "K", "dual", "w_dtype") if k in p)
        print(shape, " ".join(f"{args.param}={v}: {us:.1f} us" for v, us in r["best_us"].items()))
    with open(args.out, "w") as f:
        json.dump({"kind": "tuning-by-param", "commit": git_commit(), "command": " ".join(sys.argv),
                   "template": args.template,
                   "param": args.param, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark record: one JSON file per run under bench/results/, named <date>-<config>-<gpu>.json.

The schema (REQUIRED_* below) is what downstream readers may rely on; extra keys may be added, none removed.
Figures an engine could not produce are null, with the reason in its "notes" (or "error" when it failed).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

SCHEMA_VERSION = 1

REQUIRED_TOP = ("kind", "date", "commit", "gpu", "driver", "torch", "triton", "command", "workload",
                "ceilings", "roofline", "engines", "logits_rel_err_vs_fp32")
REQUIRED_WORKLOAD = ("config", "batch", "prompt_len", "decode_len", "dtype")
REQUIRED_ENGINE = ("ttft_ms", "ttft_ms_p10", "ttft_ms_p90", "decode_tok_s", "j_per_token", "peak_mem_gib",
                   "launches_per_step", "compile_s_cold", "compile_s_warm", "notes")


@dataclass(frozen=True)
class Workload:
    config: str  # built-in name or checkpoint path
    prompt_len: int
    decode_len: int
    max_seq_len: int
    dtype: str = "bfloat16"
    batch: int = 1
    weights: str = "random(std=0.02)"  # or "checkpoint"


@dataclass(frozen=True)
class EngineResult:
    """What one engine measured; every figure None when it was not measured (see notes / error)."""

    ttft_ms: float | None = None
    ttft_ms_p10: float | None = None
    ttft_ms_p90: float | None = None
    decode_tok_s: float | None = None  # 1000 / median per-step time
    decode_tok_s_loop: float | None = None  # tokens / time of whole timed loops
    decode_ms_p10: float | None = None
    decode_ms_p90: float | None = None
    j_per_token: float | None = None
    decode_watts: float | None = None  # mean GPU power over the timed decode loops (energy / wall time of that window)
    decode_sm_mhz: float | None = None  # mean SM clock over them (NVML, sampled every 10 ms)
    decode_temp_c: float | None = None  # mean GPU temperature over them: a hotter chip draws more for the same work
    prefill_j: float | None = None  # GPU energy per timed prefill
    prefill_watts: float | None = None  # mean GPU power over the timed prefills (energy / wall time of that window)
    prefill_sm_mhz: float | None = None  # mean SM clock over them: below the maximum at the power limit
    prefill_temp_c: float | None = None
    peak_mem_gib: float | None = None
    unread_weights_gib: float | None = None  # model parameters the engine does not read (measure.unread_gib)
    peak_mem_gib_own: float | None = None  # peak_mem_gib less unread_weights_gib: the engine's own peak
    launches_per_step: float | None = None
    compile_s_cold: float | None = None
    compile_s_warm: float | None = None
    decode_roofline_share: float | None = None
    prefill_roofline_share: float | None = None
    modes: dict = field(default_factory=dict)  # e.g. {"prefill": "default", "decode": "reduce-overhead"}
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def git_commit(cwd: Path | None = None) -> str:
    """$DS4C_COMMIT when set (a copy of the tree whose .git is absent or stale, as on a remote GPU machine),
    else git rev-parse HEAD of the source tree, else "unknown"."""
    if os.environ.get("DS4C_COMMIT"):
        return os.environ["DS4C_COMMIT"]
    where = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "missing"


def make_record(*, workload: Workload, gpu: str, driver: str, command: str, ceilings: dict,
                roofline: dict, engines: dict[str, EngineResult], logits_err: dict[str, float | None],
                greedy_equal_eager: dict[str, bool | None] | None = None, date: str | None = None,
                commit: str | None = None, extra: dict | None = None) -> dict:
    """The record as a JSON-ready dict."""
    rec = {
        "kind": "bench",
        "schema": SCHEMA_VERSION,
        "date": date or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit or git_commit(),
        "gpu": gpu,
        "driver": driver,
        "torch": torch.__version__,
        "triton": triton_version(),
        "command": command,
        "workload": asdict(workload),
        "ceilings": dict(ceilings),
        "roofline": dict(roofline),
        "engines": {name: asdict(r) for name, r in engines.items()},
        "logits_rel_err_vs_fp32": dict(logits_err),
        "greedy_equal_eager": greedy_equal_eager,
    }
    rec["vs_best_inductor"] = vs_best_inductor(rec["engines"])
    rec.update(extra or {})
    return rec


def vs_best_inductor(engines: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Per engine, against the best inductor mode of each figure: the speed-up for prefill (ttft) and decode
    (tok/s), >1 is faster; and the energy per decoded token as a fraction of the lowest, <1 is less.

    engines maps name -> the engine's dict in the record; None where either figure is missing.
    """
    ind = [e for n, e in engines.items() if n.startswith("inductor")]
    ttfts = [e["ttft_ms"] for e in ind if e.get("ttft_ms")]
    toks = [e["decode_tok_s"] for e in ind if e.get("decode_tok_s")]
    joules = [e["j_per_token"] for e in ind if e.get("j_per_token")]
    best_ttft = min(ttfts) if ttfts else None
    best_tok = max(toks) if toks else None
    best_j = min(joules) if joules else None
    out = {}
    for name, e in engines.items():
        ttft, tok, j = e.get("ttft_ms"), e.get("decode_tok_s"), e.get("j_per_token")
        out[name] = {"prefill": best_ttft / ttft if best_ttft and ttft else None,
                     "decode": tok / best_tok if best_tok and tok else None,
                     "energy": j / best_j if best_j and j else None}
    return out


def check_record(rec: dict) -> None:
    """Raise ValueError naming the first missing key of the schema."""
    for k in REQUIRED_TOP:
        if k not in rec:
            raise ValueError(f"bench record lacks {k!r}")
    if rec["kind"] != "bench":
        raise ValueError(f"bench record kind is {rec['kind']!r}")
    for k in REQUIRED_WORKLOAD:
        if k not in rec["workload"]:
            raise ValueError(f"bench record workload lacks {k!r}")
    for k in ("hbm_gb_s", "bf16_tflops"):
        if k not in rec["ceilings"]:
            raise ValueError(f"bench record ceilings lack {k!r}")
    for k in ("decode_tok_s", "prefill_ms"):
        if k not in rec["roofline"]:
            raise ValueError(f"bench record roofline lacks {k!r}")
    for name, e in rec["engines"].items():
        for k in REQUIRED_ENGINE:
            if k not in e:
                raise ValueError(f"bench record engine {name!r} lacks {k!r}")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-").lower() or "unknown"


def default_path(rec: dict, results_dir: Path) -> Path:
    """results_dir/<date>-<config>-<gpu>.json (date to the second, so runs of one day do not collide)."""
    date = rec["date"].replace(":", "").replace("T", "-").rstrip("Z")
    config = Path(rec["workload"]["config"]).name
    return results_dir / f"{_slug(date)}-{_slug(config)}-{_slug(rec['gpu'])}.json"


def write_record(rec: dict, out: Path) -> Path:
    """Check the record and write it (parents created; atomic replace)."""
    check_record(rec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    text = json.dumps(_finite(rec), indent=2, allow_nan=False, default=_jsonable)
    tmp.write_text(text + "\n")
    tmp.replace(out)
    return out


def _finite(x):
    """Non-finite floats become the strings "inf", "-inf", "nan" (JSON has no such numbers)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _jsonable(x):
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")

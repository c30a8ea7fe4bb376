"""The compile cache: a plan is a pure function of the model's architecture, the compile options and the
toolchain, except for the kernel configs, which the tuning database may improve at any time. So a compiled
plan is kept in the user's cache directory, keyed by everything else, and a warm compile loads it and only
asks the database again for each kernel's config (no capture, no passes). Any change to ds4c's own source
changes the key."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from functools import cache
from pathlib import Path

import torch
import triton

import ds4c
from ds4c.runtime.loader import cache_dir
from ds4c.runtime.plan import Plan, PlanError, load, save

from .lower import Chooser


@cache
def _source_digest() -> str:
    """Hash of every Python and template file of the installed ds4c package."""
    h = hashlib.sha256()
    for pkg in ("ds4c", "ds4c.passes", "ds4c.kernel_templates", "ds4c.runtime"):
        base = Path(importlib.import_module(pkg).__file__).resolve().parent
        for f in sorted(base.glob("*.py")) + sorted(base.glob("*.py.j2")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def plan_key(arch: dict, prefill_len: int, max_seq_len: int, dtype: str, precision: str) -> str:
    fields = {"arch": arch, "prefill_len": prefill_len, "max_seq_len": max_seq_len, "dtype": dtype,
              "precision": precision, "torch": torch.__version__, "triton": triton.__version__,
              "ds4c": ds4c.__version__, "source": _source_digest()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _dir(key: str) -> Path:
    return cache_dir() / "compiled" / key


def lookup(key: str, choose: Chooser) -> tuple[Plan, dict[str, str], dict[str, torch.Tensor]] | None:
    """(plan with configs chosen again, kernel sources, saved state) for a cached key, else None."""
    d = _dir(key)
    try:
        plan = load(d)
    except PlanError:
        return None
    from safetensors.torch import load_file

    sources = {kid: (d / k.file).read_text() for kid, k in plan.kernels.items()}
    saved = load_file(str(d / "state.safetensors")) if (d / "state.safetensors").exists() else {}
    kernels = {}
    for kid, k in plan.kernels.items():
        config, how = choose(k.template, k.problem)
        kernels[kid] = dataclasses.replace(k, config=dict(config), config_source=how)
    return dataclasses.replace(plan, kernels=kernels), sources, saved


def store(key: str, plan: Plan, sources: dict[str, str], saved: dict[str, torch.Tensor]) -> None:
    save(plan, sources, _dir(key), saved)

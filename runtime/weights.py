"""Weights the plan derives from the checkpoint at load time, by recipe (passes/derive.py writes them):
concatenation of projections and weight-only quantization with one scale per group of ds4c.precision.QUANT_GROUP
weights along K. Recipes are data;
this file is the only code that runs them.
"""

from __future__ import annotations

import torch

from ds4c.precision import QUANT_GROUP, scale_groups

from .plan import PlanError

QMAX = {"int8": 127.0, "float8_e4m3fn": 448.0}


def quantize(w: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, K], scale [N, ceil(K / QUANT_GROUP)] float32): w[n, k] ~= values[n, k] * scale[n, k // G],
    each scale the absmax of its group over the dtype's largest value."""
    if dtype not in QMAX:
        raise PlanError(f"unknown quantized dtype {dtype!r}")
    if w.dim() != 2:
        raise PlanError(f"only 2-D weights are quantized, got shape {tuple(w.shape)}")
    n, k = w.shape
    groups = scale_groups(k)
    wf = torch.nn.functional.pad(w.float(), (0, groups * QUANT_GROUP - k)).view(n, groups, QUANT_GROUP)
    scale = (wf.abs().amax(dim=2) / QMAX[dtype]).clamp_min(1e-12)
    q = (wf / scale[:, :, None]).view(n, groups * QUANT_GROUP)[:, :k]
    if dtype == "int8":
        values = q.round().clamp(-127, 127).to(torch.int8)
    else:
        values = q.clamp(-448, 448).to(torch.float8_e4m3fn)
    return values, scale


def _run(op: str, xs: list[torch.Tensor], params: dict) -> torch.Tensor:
    if op == "cat":
        return torch.cat(xs, dim=0)
    if op == "quant":
        values, scale = quantize(xs[0], params["dtype"])
        return values if params["part"] == "values" else scale
    raise PlanError(f"unknown weight recipe {op!r}")


def derive(recipes: dict, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Compute every derived weight from base weights (and earlier derived ones), checking shapes."""
    done: dict[str, torch.Tensor] = {}
    quant_cache: dict = {}

    def get(name: str) -> torch.Tensor:
        if name in done:
            return done[name]
        if name in base:
            return base[name]
        if name not in recipes:
            raise PlanError(f"derived weight needs {name!r}, which the checkpoint does not have")
        r = recipes[name]
        xs = [get(n) for n in r["of"]]
        if r["op"] == "quant":
            key = (r["of"][0], r["params"]["dtype"])
            if key not in quant_cache:
                quant_cache[key] = quantize(xs[0], r["params"]["dtype"])
            t = quant_cache[key][0 if r["params"]["part"] == "values" else 1]
        else:
            t = _run(r["op"], xs, r["params"])
        if list(t.shape) != list(r["shape"]) or str(t.dtype).removeprefix("torch.") != r["dtype"]:
            raise PlanError(f"derived weight {name} came out {tuple(t.shape)} {t.dtype}, "
                            f"the plan expects {tuple(r['shape'])} {r['dtype']}")
        done[name] = t.contiguous()
        return done[name]

    for name in recipes:
        get(name)
    return done


def concat_views(recipes: dict, base: dict[str, torch.Tensor],
                 done: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base weights that can live inside a concatenation: {name: view of the derived tensor}.

    A weight that is one part of exactly one "cat" recipe is the same numbers as a slice of it; handing
    out the slice instead (and dropping the weight) keeps one copy of those bytes instead of two.
    """
    owners: dict[str, int] = {}
    for r in recipes.values():
        for n in r["of"]:
            owners[n] = owners.get(n, 0) + 1
    views = {}
    for name, r in recipes.items():
        if r["op"] != "cat" or name not in done:
            continue
        cat, start = done[name], 0
        for n in r["of"]:
            t = base.get(n)
            if t is None:
                break
            rows = t.shape[0]
            if owners[n] == 1 and t.dtype == cat.dtype and t.shape[1:] == cat.shape[1:]:
                views[n] = cat[start:start + rows]
            start += rows
    return views

"""The plan: what the compiler hands the runtime. Data only (JSON + generated kernel sources + a reference to
the weights), never pickle.

A plan directory holds:
    plan.json            this module's `Plan`, encoded by `to_json`
    kernels/<id>.py      generated Triton modules, each defining launch(*outputs, *inputs, **kwargs)
    state.safetensors    small constant tensors the graphs need (rope tables, lifted constants), if any
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

FORMAT_VERSION = 1


class PlanError(Exception):
    """A plan directory that cannot be used (missing, corrupt, or from another ds4c format)."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


@dataclass(frozen=True)
class Step:
    kind: str  # "kernel" (launch a generated module) or "aten" (call a torch operator: torch.ops.aten.*, or a
    # library's custom op in a torch.compile graph)
    fn: str  # kernel id or operator target "<namespace>.<op>.<overload>" ("aten.mm.default")
    args: tuple  # encoded arguments (see encode)
    kwargs: dict
    outputs: tuple  # env names of the outputs (None for an output nothing reads)
    free: tuple = ()  # env names nothing reads after this step


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int | None  # byte offset into the graph's arena; None: allocated fresh per call (outputs)


@dataclass(frozen=True)
class GraphPlan:
    inputs: tuple[tuple[str, str], ...]  # (env name, role): "user", "param:<w>", "buffer:<s>", ...
    outputs: tuple[str, ...]
    mutations: tuple[tuple[str, str], ...]  # (state name, env name of its new value)
    steps: tuple[Step, ...]
    buffers: tuple[Buffer, ...]  # kernel outputs
    arena_bytes: int


@dataclass(frozen=True)
class Kernel:
    template: str
    problem: dict
    config: dict
    config_source: str  # "tuned", "nearest", "default"
    file: str  # kernels/<id>.py inside the plan directory


@dataclass(frozen=True)
class Plan:
    graphs: dict  # name -> GraphPlan
    kernels: dict  # id -> Kernel
    derived: dict  # derived weight name -> recipe (see passes/derive.py)
    state: dict  # state name -> {"init": "zeros"|"file", "shape", "dtype"}
    meta: dict = field(default_factory=dict)  # model config, checkpoint path, prefill length, report
    format_version: int = FORMAT_VERSION


# ---- argument encoding: tensors by env name, the rest as JSON values with tagged special types ----

@dataclass(frozen=True)
class TensorArg:
    """A tensor argument: the env name of a value computed or bound earlier."""

    name: str


def encode(v):
    if isinstance(v, TensorArg):
        return {"t": v.name}
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, (list, tuple)):
        return {"tuple": [encode(x) for x in v]} if isinstance(v, tuple) else [encode(x) for x in v]
    if isinstance(v, dict):  # already encoded (a plan read back from JSON)
        return {k: encode(x) for k, x in v.items()}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": v.type}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    if isinstance(v, torch.layout):
        return {"layout": str(v).removeprefix("torch.")}
    raise TypeError(f"cannot encode {type(v).__name__} in a plan")


def _step_json(s: Step) -> dict:
    return {"kind": s.kind, "fn": s.fn, "args": [encode(a) for a in s.args],
            "kwargs": {k: encode(v) for k, v in s.kwargs.items()}, "outputs": list(s.outputs),
            "free": list(s.free)}


def to_json(plan: Plan) -> dict:
    graphs = {}
    for name, gp in plan.graphs.items():
        graphs[name] = {"inputs": [list(i) for i in gp.inputs], "outputs": list(gp.outputs),
                        "mutations": [list(m) for m in gp.mutations],
                        "steps": [_step_json(s) for s in gp.steps],
                        "buffers": [asdict(b) for b in gp.buffers], "arena_bytes": gp.arena_bytes}
    return {"format_version": plan.format_version, "graphs": graphs,
            "kernels": {k: asdict(v) for k, v in plan.kernels.items()},
            "derived": plan.derived, "state": plan.state, "meta": plan.meta}


def _tuplify(v):
    """JSON lists inside encoded args that were tuples come back tagged; plain lists stay lists."""
    if isinstance(v, dict) and set(v) == {"tuple"}:
        return {"tuple": [_tuplify(x) for x in v["tuple"]]}
    if isinstance(v, list):
        return [_tuplify(x) for x in v]
    return v


def from_json(d: dict, path: object = None) -> Plan:
    if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
        found = d.get("format_version") if isinstance(d, dict) else None
        origin = ("an older" if found < FORMAT_VERSION else "a newer") if isinstance(found, int) else "another"
        raise PlanError(f"plan format {found!r} is not {FORMAT_VERSION} (from {origin} ds4c); "
                        "compile the model again", path)
    try:
        graphs = {}
        for name, gd in d["graphs"].items():
            steps = tuple(Step(s["kind"], s["fn"], tuple(_tuplify(a) for a in s["args"]),
                               {k: _tuplify(v) for k, v in s["kwargs"].items()}, tuple(s["outputs"]),
                               tuple(s["free"])) for s in gd["steps"])
            buffers = tuple(Buffer(b["name"], tuple(b["shape"]), b["dtype"], b["offset"]) for b in gd["buffers"])
            graphs[name] = GraphPlan(tuple(tuple(i) for i in gd["inputs"]), tuple(gd["outputs"]),
                                     tuple(tuple(m) for m in gd["mutations"]), steps, buffers,
                                     int(gd["arena_bytes"]))
        kernels = {k: Kernel(**v) for k, v in d["kernels"].items()}
        return Plan(graphs, kernels, d["derived"], d["state"], d.get("meta", {}), d["format_version"])
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"plan.json is malformed ({type(e).__name__}: {e})", path) from e


def save(plan: Plan, sources: dict[str, str], out_dir: str | os.PathLike,
         state_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the plan directory atomically: into a temporary sibling, then renamed over out_dir."""
    from safetensors.torch import save_file

    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "kernels").mkdir()
        for kid, src in sources.items():
            (tmp / "kernels" / f"{kid}.py").write_text(src)
        if state_tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in state_tensors.items()},
                      str(tmp / "state.safetensors"))
        (tmp / "plan.json").write_text(json.dumps(to_json(plan), indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load(plan_dir: str | os.PathLike) -> Plan:
    """Read plan.json of a plan directory; PlanError names the file and the problem."""
    p = Path(plan_dir) / "plan.json"
    if not p.is_file():
        raise PlanError("no plan.json here (not a ds4c plan directory)", plan_dir)
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"unreadable ({e})", p) from e
    plan = from_json(d, p)
    for k in plan.kernels.values():
        if not (Path(plan_dir) / k.file).is_file():
            raise PlanError("missing kernel source", Path(plan_dir) / k.file)
    return plan

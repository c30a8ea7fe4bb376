"""The compiler driver: captured IR -> pass pipeline -> lowering, with kernel configs chosen from the
tuning database (tuning what is missing when asked), and the report of what was fused and what fell back.
Used by `ds4c compile` (ds4c/llm.py) and the torch.compile backend (ds4c/backend.py).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections import Counter
from dataclasses import dataclass

from ds4c import kernel_templates
from ds4c.passes.match import VIEW_OPS

from .device import GpuInfo, current_gpu
from .ir import Graph, op_of, ordered
from .lower import Chooser, KernelTable, lower
from .pipeline import default_passes, run_pipeline

log = logging.getLogger("ds4c")


@dataclass(frozen=True)
class Options:
    precision: str = "bf16"  # a mode of ds4c.precision.POLICY
    db_url: str | None = None  # None: $DS4C_DB, else the SQLite file in the cache directory
    use_db: bool = True  # False: heuristic defaults only (no database is opened)
    tune_trials: int = 0  # > 0: tune problems the database lacks, this many measured trials each
    tune_seconds: float | None = None
    use_cache: bool = True  # reuse a compiled plan of the same model, options and ds4c (configs re-chosen)


def _import_off_stack(module: str) -> None:
    """Import module on a thread of its own the first time. Optuna keeps the ImportError of each optional
    backend it lacks (redis, ...) for a later message, and with its traceback every frame of the stack that
    imported it: imported from here, the frames of compile_llm and its callers, and so the compiled model
    they return, would stay alive as long as the process."""
    if module in sys.modules:
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            importlib.import_module(module)
        except BaseException as e:  # raised again below, from the caller's stack
            failed.append(e)

    t = threading.Thread(target=run, name=f"import {module}")
    t.start()
    t.join()
    if failed:
        raise failed[0].with_traceback(None)


def make_chooser(options: Options, gpu: GpuInfo | None = None) -> Chooser:
    """(template, problem) -> (config, how): tuned entry, nearest tuned shape, fresh tuning, or default."""
    gpu = gpu or current_gpu()
    db = None
    if options.use_db:
        _import_off_stack("ds4c.tuning_db.db")  # optuna is heavy: only when a database is used
        from ds4c.tuning_db.db import TuningDB

        db = TuningDB(options.db_url)

    def choose(template_name: str, problem: dict) -> tuple[dict, str]:
        t = kernel_templates.get(template_name)
        if db is not None:
            from ds4c.tuning_db.key import tuning_key

            found = db.best_valid(tuning_key(t, problem, gpu), t, problem, gpu)
            if found is not None:
                return found[0], "tuned"
            if options.tune_trials > 0:
                from ds4c.tuning_db.tuner import TuneSettings, tune

                r = tune(t, problem, db, gpu, TuneSettings(trials=options.tune_trials,
                                                           seconds=options.tune_seconds))
                if r.best_config is not None:
                    return r.best_config, "tuned"
            near = db.lookup(t, problem, gpu)
            if near is not None:
                return near, "nearest"
        if gpu.is_interpreter:
            return interpreter_config(t, problem, gpu), "default"
        return t.default(problem, gpu), "default"

    return choose


def interpreter_config(t, problem: dict, gpu: GpuInfo) -> dict:
    """Under the Triton interpreter the cost is per program, not per byte: take the valid config with the
    largest tiles (fewest programs), up to a million elements a tile. Triton configs only (IMPL 0): the CPU
    runs are there to exercise the generated kernels."""

    def size(c: dict) -> int:
        n = 1
        for k, v in c.items():
            if k.startswith("BLOCK") or k == "ROWS":
                n *= v
        return n

    best, best_size = t.default(problem, gpu), 0
    for c in t.space.grid():
        s = size(c)
        if best_size < s <= 1 << 20 and c.get("IMPL", 0) == 0 and t.valid(c, problem, gpu):
            best, best_size = c, s
    return best


def optimize(g: Graph, options: Options) -> Graph:
    return run_pipeline(g, default_passes(options.precision))


def compile_graph(g: Graph, table: KernelTable, choose: Chooser, options: Options):
    """(optimised IR, GraphPlan) for one captured graph."""
    opt = optimize(g, options)
    return opt, lower(opt, table, choose)


def _why(target: str) -> str:
    if target in VIEW_OPS:
        return "view: metadata only, no data moved"
    if target.split(".")[1].endswith("_"):
        return "in-place state write (KV cache)"
    if target in ("aten.embedding.default", "aten.index_select.default", "aten.arange.default",
                  "aten.le.Tensor", "aten.add.Tensor"):
        return "gather/index arithmetic: no template covers it (cheap)"
    return "no ds4c template covers this op"


def report(graphs: dict[str, Graph], table: KernelTable) -> dict:
    """What was fused into which kernels, how often each rule fired, and every op left to ATen with why."""
    out = {}
    for name, g in graphs.items():
        kernels, fallbacks = Counter(), Counter()
        groups = Counter()
        for n in ordered(g):
            op = op_of(g, n)
            if op.target == "input":
                continue
            if op.is_kernel:
                kernels[op.template] += 1
                groups[f"{op.group}: {' + '.join(dict.fromkeys(op.fused))}"] += 1
            else:
                fallbacks[op.target] += 1
        out[name] = {
            "kernels": dict(kernels), "groups": dict(groups), "rules": dict(g.graph.get("stats", {})),
            "fallbacks": {t: {"count": c, "why": _why(t)} for t, c in sorted(fallbacks.items())},
        }
    configs = Counter(k.config_source for k in table.kernels.values())
    out["configs"] = dict(configs)
    return out


def format_report(rep: dict) -> str:
    lines = []
    for name, r in rep.items():
        if name == "configs":
            continue
        lines.append(f"== {name}: {sum(r['kernels'].values())} kernel launches "
                     f"({', '.join(f'{k} x{v}' for k, v in sorted(r['kernels'].items()))})")
        lines.append("  fusion groups:")
        for grp, c in sorted(r["groups"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {c:4d} x {grp}")
        lines.append("  rules fired: " + ", ".join(f"{k} {v}" for k, v in sorted(r["rules"].items())))
        lines.append("  on ATen:")
        for t, f in r["fallbacks"].items():
            lines.append(f"    {f['count']:4d} x {t:40s} {f['why']}")
    lines.append("kernel configs: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.get("configs", {}).items())))
    return "\n".join(lines)


def build_executable(g: Graph, state: dict, options: Options, device):
    """Compile one captured graph and bind it: state maps roles ("param:<name>", "buffer:<name>") to
    tensors. Returns (Executable, optimised IR, KernelTable). The in-memory twin of a saved plan."""
    import json

    from ds4c.runtime.executor import Executable
    from ds4c.runtime.loader import load_source
    from ds4c.runtime.plan import Plan, from_json, to_json
    from ds4c.runtime.weights import derive

    table = KernelTable({}, {})
    opt, gp = compile_graph(g, table, make_chooser(options), options)
    plan = from_json(json.loads(json.dumps(to_json(Plan({"main": gp}, table.kernels, {}, {})))))
    kernels = {kid: load_source(src) for kid, src in table.sources.items()}
    base = {r.split(":", 1)[1]: t for r, t in state.items() if r.startswith("param:")}
    values = dict(state)
    values.update({f"derived:{k}": v for k, v in derive(opt.graph.get("derived", {}), base).items()})
    return Executable(plan.graphs["main"], kernels, plan.kernels, values, device), opt, table

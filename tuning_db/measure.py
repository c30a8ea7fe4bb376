"""Measuring one candidate config: render -> load -> launch on random inputs -> check -> time.

Sits inside the tuner: it is the objective Optuna minimises. No config is timed until its outputs (poisoned
before the launch, so unwritten elements show) match the template's fp32/fp64 reference within
ds4c.precision.TOLERANCE. Anything that fails to compile, raises, runs out of resources or is wrong returns
a failed Measurement with the reason; it never raises.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import dataclass

import torch

from ds4c.device import GpuInfo, default_device
from ds4c.kernel_templates.base import Config, Problem, Template
from ds4c.precision import TOLERANCE, rel_error
from ds4c.runtime.graphs import capture
from ds4c.runtime.loader import load_source
from ds4c.tuning_db.key import canonical_json

INTERPRETER_REPS = 3  # wall-clock runs under the interpreter (its timings say nothing about a GPU)
MAX_INPUT_SETS = 32  # rotating input sets on the GPU, so a small problem is not timed from a warm L2
GRAPH_LAUNCHES = 32  # launches recorded in the timing graph (whole rounds over the input sets)
GRAPH_REPLAYS = 25  # at most this many timed replays ...
GRAPH_MS = 100.0  # ... or until this much GPU time (at least 3)


@dataclass(frozen=True)
class Measurement:
    ok: bool
    us: float  # median microseconds per launch; inf when not ok
    reason: str = ""  # why it failed ("" when ok)


def _fail(stage: str, err: BaseException | str) -> Measurement:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return Measurement(False, math.inf, f"{stage}: {text}"[:2000])


def poison(t: torch.Tensor) -> None:
    """Fill an output with values no correct kernel leaves behind."""
    if t.dtype.is_floating_point:
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.fill_(True)
    else:
        t.fill_(torch.iinfo(t.dtype).min)


def check_outputs(outs: list, refs: list) -> str:
    """'' when every output matches its reference within the tolerance of its dtype, else the reason."""
    if len(outs) != len(refs):
        return f"{len(outs)} outputs but {len(refs)} references"
    for i, (o, r) in enumerate(zip(outs, refs, strict=True)):
        if tuple(o.shape) != tuple(r.shape):
            return f"output {i}: shape {tuple(o.shape)} != {tuple(r.shape)}"
        tol = TOLERANCE.get(o.dtype)
        err = rel_error(o, r)
        bound = tol.rel if tol is not None else 0.0
        if not err <= bound:
            return f"output {i}: rel error {err:.3e} > {bound:.1e} ({o.dtype})"
    return ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input_bytes(outs: list, ins: list) -> int:
    return sum(t.numel() * t.element_size() for t in [*outs, *ins] if isinstance(t, torch.Tensor))


class _Inputs:
    """The random inputs, references and rotating timing sets of the last problem measured.

    Every candidate of one problem is checked and timed on the same inputs, so they are made (and the fp32
    reference computed on the CPU) once per problem rather than once per candidate: for a decode GEMV or a
    2048-row GEMM that generation costs more than compiling and timing a candidate does.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.outs: list = []
        self.ins: list = []
        self.refs: list | None = None
        self.sets: list = []

    def get(self, template: Template, problem: Problem, device: torch.device, seed: int) -> _Inputs:
        key = (template.name, canonical_json(problem), str(device), seed)
        if key != self.key:
            self.key, self.refs, self.sets = None, None, []
            self.outs, self.ins = template.make_inputs(problem, device, torch.Generator().manual_seed(seed))
            self.key = key
        return self


_LAST = _Inputs()


def measure(template: Template, problem: Problem, config: Config, gpu: GpuInfo, *,
            device: torch.device | None = None, seed: int = 0) -> Measurement:
    """Check config on random inputs (fixed by seed), then time it (see the module docstring)."""
    device = device or default_device()
    try:
        mod = load_source(template.source(problem))
    except Exception as e:  # a template that does not render or import is a failed candidate
        return _fail("compile", e)
    kwargs = {**template.launch_kwargs(problem), **config}
    try:
        data = _LAST.get(template, problem, device, seed)
        outs, ins = data.outs, data.ins
        for o in outs:
            poison(o)
        mod.launch(*outs, *ins, **kwargs)
        _sync(device)
    except Exception as e:  # compile errors, OutOfResources, launch errors
        return _fail("launch", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}")
    try:
        if data.refs is None:
            data.refs = template.reference(problem, ins)
        wrong = check_outputs(outs, data.refs)
    except Exception as e:
        return _fail("check", e)
    if wrong:
        return _fail("wrong", wrong)
    try:
        if device.type == "cuda":
            us = _time_cuda(template, problem, mod, kwargs, gpu, device, data, seed)
        else:
            us = _time_wall(mod, kwargs, outs, ins)
    except Exception as e:
        return _fail("time", e)
    return Measurement(True, us)


def _time_wall(mod, kwargs: dict, outs: list, ins: list) -> float:
    """Median wall-clock microseconds over a few runs (the interpreter path)."""
    times = []
    for _ in range(INTERPRETER_REPS):
        t0 = time.perf_counter()
        mod.launch(*outs, *ins, **kwargs)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _time_cuda(template, problem, mod, kwargs, gpu, device, data: _Inputs, seed) -> float:
    """Median microseconds per launch, timed as the kernel runs in a compiled plan: back to back inside a
    CUDA graph (decode replays one), rotating over input sets when one set fits in L2. Falls back to
    triton's do_bench (one launch per timing, L2 flushed) when a launch cannot be captured."""
    if not data.sets:
        data.sets = [(data.outs, data.ins)]
        size = max(1, _input_bytes(data.outs, data.ins))
        if size < gpu.l2_bytes:
            n = min(MAX_INPUT_SETS, 2 * gpu.l2_bytes // size + 1)
            for i in range(1, n):
                data.sets.append(template.make_inputs(problem, device, torch.Generator().manual_seed(seed + i)))
    sets = data.sets

    def launch(i: int) -> None:
        o, a = sets[i % len(sets)]
        mod.launch(*o, *a, **kwargs)

    try:
        return _time_graph(launch, len(sets), device)
    except Exception:  # not capturable (a host sync in a launch, ...): time plain launches
        torch.cuda.synchronize(device)
    import triton.testing

    state = {"i": 0}

    def run() -> None:
        launch(state["i"])
        state["i"] += 1

    ms = triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
    return float(ms) * 1e3


def _time_graph(launch, n_sets: int, device: torch.device) -> float:
    """Record GRAPH_LAUNCHES launches (whole rounds over the input sets) in one CUDA graph, replay it until
    GRAPH_MS of GPU time or GRAPH_REPLAYS replays, and return the median replay time per launch (us)."""
    n = n_sets * max(1, -(-GRAPH_LAUNCHES // n_sets))

    def launches() -> None:
        for i in range(n):
            launch(i)

    graph, _ = capture(launches)
    graph.replay()
    torch.cuda.synchronize(device)
    times: list[float] = []
    while len(times) < GRAPH_REPLAYS and (len(times) < 3 or sum(times) < GRAPH_MS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times) * 1e3 / n


def precompile(template: Template, problem: Problem, config: Config) -> str:
    """Run a candidate once so Triton's on-disk cache holds its binary; '' or the failure reason.

    Called in pool worker processes on CUDA while the parent times other candidates: the parent's own
    launch of the same config is then a cache hit. A crash here (illegal address, ...) stays in the worker.
    """
    device = default_device()
    try:
        mod = load_source(template.source(problem))
        data = _LAST.get(template, problem, device, 0)
        mod.launch(*data.outs, *data.ins, **template.launch_kwargs(problem), **config)
        _sync(device)
    except Exception as e:
        return f"compile: {type(e).__name__}: {e}"[:2000]
    return ""

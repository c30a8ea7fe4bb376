"""Shared helpers of the pass tests: capture a small module or function, run a list of passes checking the IR
invariants and the purity of every pass, list the targets left, and execute an optimised graph to compare
with eager PyTorch."""

from __future__ import annotations

import json
from collections import Counter

import torch
from torch import nn

from ds4c.capture import export_graph, graph_from_fx
from ds4c.compiler import Options, make_chooser
from ds4c.ir import Graph, op_of, ordered, verify
from ds4c.lower import KernelTable, lower
from ds4c.pipeline import default_passes
from ds4c.precision import assert_close


class Fn(nn.Module):
    """A function of tensors as a module (torch.export wants a module); params become "param:" inputs."""

    def __init__(self, fn, **params: torch.Tensor):
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            self.register_parameter(k, nn.Parameter(v, requires_grad=False))

    def forward(self, *args):
        return self.fn(self, *args)


def capture(module: nn.Module, args: tuple) -> tuple[Graph, dict]:
    """(IR of module(*args), state by role) with torch.export; the IR is verified."""
    g = export_graph(module, args).graph
    verify(g)
    state = {f"param:{n}": p.detach() for n, p in module.named_parameters()}
    state.update({f"buffer:{n}": b for n, b in module.named_buffers()})
    return g, state


def capture_aten(fn, args: tuple) -> tuple[Graph, torch.fx.GraphModule]:
    """The IR of fn(*args) as the torch.compile backend sees it: dynamo -> aot_autograd -> graph_from_fx."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = []

    def grab(gm, example_inputs):
        seen.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(fn, backend=aot_autograd(fw_compiler=grab), fullgraph=True)(*args)
    assert len(seen) == 1, f"expected one graph, dynamo made {len(seen)}"
    g = graph_from_fx(seen[0])
    verify(g)
    return g, seen[0]


def _snapshot(g: Graph):
    return ({n: d["op"] for n, d in g.nodes(data=True)}, list(g.graph["outputs"]), dict(g.graph["stats"]))


def run(g: Graph, passes: list) -> Graph:
    """Run passes in order, verifying every intermediate graph and that no pass changed its input."""
    verify(g)
    for p in passes:
        before = _snapshot(g)
        h = p(g)
        assert _snapshot(g) == before, f"{p.__name__} changed its input graph"
        verify(h)
        g = h
    return g


def upto(pass_name: str, precision: str = "bf16") -> list:
    """default_passes up to and including the pass named pass_name."""
    ps = default_passes(precision)
    names = [p.__name__ for p in ps]
    return ps[: names.index(pass_name) + 1]


def targets(g: Graph) -> list[str]:
    """Targets of the non-input nodes in graph order."""
    return [op_of(g, n).target for n in ordered(g) if op_of(g, n).target != "input"]


def count(g: Graph, target: str) -> int:
    return Counter(targets(g))[target]


def stats(g: Graph) -> dict:
    return dict(g.graph.get("stats", {}))


def kernels(g: Graph) -> list[str]:
    return [t.removeprefix("kernel:") for t in targets(g) if t.startswith("kernel:")]


def bind(g: Graph, state: dict, device: torch.device, choose=None):
    """Lower an already optimised graph (no further passes) and bind it like build_executable; choose picks
    each kernel's config (default: the untuned default)."""
    from ds4c.runtime.executor import Executable
    from ds4c.runtime.loader import load_source
    from ds4c.runtime.plan import Plan, from_json, to_json
    from ds4c.runtime.weights import derive

    table = KernelTable({}, {})
    gp = lower(g, table, choose or make_chooser(Options(use_db=False)))
    plan = from_json(json.loads(json.dumps(to_json(Plan({"main": gp}, table.kernels, {}, {})))))
    kern = {kid: load_source(src) for kid, src in table.sources.items()}
    state = {r: t.to(device) for r, t in state.items()}  # state already on device is written in place
    base = {r.split(":", 1)[1]: t for r, t in state.items() if r.startswith("param:")}
    values = dict(state)
    values.update({f"derived:{k}": v for k, v in derive(g.graph.get("derived", {}), base).items()})
    return Executable(plan.graphs["main"], kern, plan.kernels, values, device)


def execute(g: Graph, state: dict, inputs: tuple, device: torch.device) -> list[torch.Tensor]:
    """Lower an already optimised graph (no further passes), bind it like build_executable and run it."""
    return bind(g, state, device)(*(x.to(device) for x in inputs))


def in_fp32(module: nn.Module):
    """A reference callable: a float32 copy of module on float32 copies of the (floating) inputs."""
    import copy

    ref = copy.deepcopy(module).float()

    def call(*inputs):
        return ref(*(x.float() if x.is_floating_point() else x for x in inputs))

    return call


def check_numbers(g: Graph, state: dict, module, inputs: tuple, device, dtype=None, what: str = ""):
    """The optimised graph run on inputs equals module(*inputs) in eager PyTorch (module may be a reference
    callable such as in_fp32(m)), within the tolerance of dtype (default: the reference's dtype)."""
    outs = execute(g, state, inputs, device)
    ref = module(*inputs)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs, strict=True):
        assert_close(o.cpu(), r.cpu(), dtype or r.dtype, what)

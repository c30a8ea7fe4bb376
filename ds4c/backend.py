"""`torch.compile(model, backend="ds4c")`: dynamo's graph -> aot_autograd (ATen level) -> the ds4c
pipeline -> an Executable. Ops no template covers run on ATen (logged once per graph with the reason);
a graph ds4c cannot take at all (unsupported values) runs as aot_autograd gave it, with a warning.

ds4c compiles static shapes. A graph with symbolic sizes (dynamo marks a size dynamic once it has seen it
change, or with `dynamic=True`) is compiled once per concrete signature of its inputs, when a call first
brings it: up to MAX_SPECIALIZATIONS of them, after which new signatures run on ATen as captured.
Registered through the `torch_dynamo_backends` entry point in pyproject.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .capture import fx_constants, graph_from_fx
from .compiler import Options, build_executable, report
from .errors import Ds4cError
from .runtime.plan import PlanError

log = logging.getLogger("ds4c.backend")


def _device_of(inputs) -> torch.device:
    for t in inputs:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


MAX_SPECIALIZATIONS = 8  # static compiles per graph with symbolic sizes; later signatures run on ATen


def compile_aten(gm: torch.fx.GraphModule, example_inputs, options: Options | None = None):
    """An ATen FX graph -> a boxed callable running ds4c kernels (or gm itself if ds4c cannot take it)."""
    from functorch.compile import make_boxed_func
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    options = options or Options(use_db=True)
    if _is_symbolic(gm):
        return make_boxed_func(PerShape(gm, options))
    with unset_fake_temporarily():  # aot_autograd calls us under fake mode: the arena must be real
        run = _compile_static(gm, options, _device_of(example_inputs))
    return make_boxed_func(run or gm.forward)


def _compile_static(gm: torch.fx.GraphModule, options: Options, device: torch.device) -> Callable | None:
    """gm (static shapes) compiled by ds4c; None, with a warning, where ds4c cannot take it. Outputs that
    are constants (the sizes and Nones a training forward returns beside its tensors) are returned by the
    callable in their places, not computed."""
    body, constants = _without_constant_outputs(gm)
    try:
        g = graph_from_fx(body)
        exe, opt, table = build_executable(g, fx_constants(body), options, device)
    except (Ds4cError, PlanError, NotImplementedError) as e:
        log.warning("ds4c: running this graph on ATen as captured: %s", e)
        return None
    rep = report({"graph": opt}, table)["graph"]
    fallbacks = {t: f for t, f in rep["fallbacks"].items() if not f["why"].startswith("view")}
    if fallbacks:
        log.warning("ds4c: %d op(s) fall back to ATen: %s", sum(f["count"] for f in fallbacks.values()),
                    "; ".join(f"{t} x{f['count']} ({f['why']})" for t, f in fallbacks.items()))

    def run(*args):
        outs = exe(*args)
        for i in sorted(constants):
            outs.insert(i, constants[i])
        return outs

    run.ds4c_report = rep
    return run


def _without_constant_outputs(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, dict[int, object]]:
    """gm, or a copy of it whose output lists only the values its nodes compute, with the constant outputs
    by position."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out.args[0]
    if not isinstance(outs, (list, tuple)) or all(isinstance(o, torch.fx.Node) for o in outs):
        return gm, {}
    graph = torch.fx.Graph()
    env: dict = {}
    graph.graph_copy(gm.graph, env)
    graph.output(type(outs)(env[o] for o in outs if isinstance(o, torch.fx.Node)))
    return torch.fx.GraphModule(gm, graph), {i: o for i, o in enumerate(outs) if not isinstance(o, torch.fx.Node)}


def _is_symbolic(gm: torch.fx.GraphModule) -> bool:
    """True when an input of gm is a symbolic size or a tensor with one."""
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.SymInt | torch.SymFloat | torch.SymBool):
            return True
        if isinstance(val, torch.Tensor) and any(
                isinstance(d, torch.SymInt) for d in (*val.shape, *val.stride(), val.storage_offset())):
            return True
    return False


def _signature(args) -> tuple:
    """What a static compile of a graph depends on in its inputs: each tensor's shape, strides, dtype and
    device; each other value itself."""
    return tuple((tuple(a.shape), a.stride(), a.dtype, a.device) if isinstance(a, torch.Tensor) else (type(a), a)
                 for a in args)


class PerShape:
    """A graph with symbolic sizes, compiled by ds4c once per signature of its inputs (`_signature`).

    A call with a new signature traces the graph again at those concrete sizes (make_fx over fake copies
    of the inputs: the sizes become constants and the non-tensor inputs leave the graph) and compiles that
    static graph. After MAX_SPECIALIZATIONS of them, new signatures run the symbolic graph on ATen.
    """

    def __init__(self, gm: torch.fx.GraphModule, options: Options):
        self.gm, self.options = gm, options
        self.compiled: dict[tuple, Callable] = {}
        self._warned = False

    def __call__(self, *args):
        key = _signature(args)
        fn = self.compiled.get(key)
        if fn is None:
            fn = self._specialize(args, key)
        return fn(*args)

    def _specialize(self, args: tuple, key: tuple) -> Callable:
        if len(self.compiled) >= MAX_SPECIALIZATIONS:
            if not self._warned:
                log.warning("ds4c: this graph met more than %d input signatures; new ones run on ATen as "
                            "captured", MAX_SPECIALIZATIONS)
                self._warned = True
            return self.gm.forward
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        log.info("ds4c: compiling the graph for input shapes %s (%d of at most %d)", shapes,
                 len(self.compiled) + 1, MAX_SPECIALIZATIONS)
        try:
            static = _trace_static(self.gm, args)
        except Exception as e:  # a graph make_fx cannot trace again: ATen as captured, never a failed call
            log.warning("ds4c: running this graph on ATen as captured: tracing it at %s failed: %s", shapes, e)
            fn = self.gm.forward
        else:
            run = _compile_static(static, self.options, _device_of(args))
            fn = self.gm.forward if run is None else _tensors_only(run)
        self.compiled[key] = fn
        return fn


def _trace_static(gm: torch.fx.GraphModule, args: tuple) -> torch.fx.GraphModule:
    """gm traced again at the concrete values of args: its placeholders are the tensor inputs only (the
    sizes a forward returns for its backward become constant outputs)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    tensor_at = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def at_these_sizes(*tensors):
        full = list(args)
        for i, t in zip(tensor_at, tensors, strict=True):
            full[i] = t
        return gm(*full)

    return make_fx(at_these_sizes, tracing_mode="fake")(*(args[i] for i in tensor_at))


def _tensors_only(run: Callable) -> Callable:
    """run (a static graph's callable) called with the tensor arguments only."""

    def call(*args):
        return run(*(a for a in args if isinstance(a, torch.Tensor)))

    call.ds4c_report = run.ds4c_report
    return call


def ds4c_backend(gm: torch.fx.GraphModule, example_inputs, **kwargs):
    """The dynamo backend: lower to ATen with aot_autograd, compile the forward graph with ds4c."""
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=compile_aten)(gm, example_inputs, **kwargs)

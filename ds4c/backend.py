"""`torch.compile(model, backend="ds4c")`: dynamo's graph -> aot_autograd (ATen level) -> the ds4c
pipeline -> an Executable. Ops no template covers run on ATen (logged once per graph with the reason);
a graph ds4c cannot take at all (symbolic shapes, unsupported values) runs as aot_autograd gave it,
with a warning. Registered through the `torch_dynamo_backends` entry point in pyproject.toml.
"""

from __future__ import annotations

import logging

import torch

from .capture import graph_from_fx
from .compiler import Options, build_executable, report
from .errors import Ds4cError

log = logging.getLogger("ds4c.backend")


def _device_of(inputs) -> torch.device:
    for t in inputs:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def compile_aten(gm: torch.fx.GraphModule, example_inputs, options: Options | None = None):
    """An ATen FX graph -> a boxed callable running ds4c kernels (or gm itself if ds4c cannot take it)."""
    from functorch.compile import make_boxed_func

    options = options or Options(use_db=True)
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    try:
        g = graph_from_fx(gm)
        with unset_fake_temporarily():  # aot_autograd calls us under fake mode: the arena must be real
            exe, opt, table = build_executable(g, {}, options, _device_of(example_inputs))
    except (Ds4cError, NotImplementedError) as e:
        log.warning("ds4c: running this graph on ATen as captured: %s", e)
        return make_boxed_func(gm.forward)
    rep = report({"graph": opt}, table)["graph"]
    fallbacks = {t: f for t, f in rep["fallbacks"].items() if not f["why"].startswith("view")}
    if fallbacks:
        log.warning("ds4c: %d op(s) fall back to ATen: %s", sum(f["count"] for f in fallbacks.values()),
                    "; ".join(f"{t} x{f['count']} ({f['why']})" for t, f in fallbacks.items()))

    def run(*args):
        return exe(*args)

    run.ds4c_report = rep
    return make_boxed_func(run)


def ds4c_backend(gm: torch.fx.GraphModule, example_inputs, **kwargs):
    """The dynamo backend: lower to ATen with aot_autograd, compile the forward graph with ds4c."""
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=compile_aten)(gm, example_inputs, **kwargs)

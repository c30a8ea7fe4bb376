"""CUDA graph capture, the one way ds4c records work for replay: the prefill and decode steps
(runtime/llm.py), the tuner's timing (tuning_db/measure.py) and the benchmarks (ds4c/benchmark/measure.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def capture(fn: Callable[[], Any], warmup: int = 1) -> tuple[torch.cuda.CUDAGraph, Any]:
    """(graph, what fn returned during the capture): fn runs `warmup` times on a side stream first, so that
    modules load and kernels compile outside the capture, then once under capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


class Replay:
    """fn(*inputs) recorded once as a CUDA graph over static copies of its first inputs. A call copies its
    inputs into them and replays; it returns the static outputs, which the next call overwrites."""

    def __init__(self, fn: Callable[..., Any], *inputs: torch.Tensor, warmup: int = 2):
        self.inputs = tuple(x.clone() for x in inputs)
        self.graph, self.outputs = capture(lambda: fn(*self.inputs), warmup=warmup)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x)
        self.graph.replay()
        return self.outputs

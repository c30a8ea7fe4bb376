"""CUDA graph capture, the one way ds4c records work for replay: the prefill and decode steps
(runtime/llm.py), the tuner's timing (tuning_db/measure.py) and the benchmarks (ds4c/benchmark/measure.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def capture(fn: Callable[[], Any], warmup: int = 1) -> tuple[torch.cuda.CUDAGraph, Any]:
    """(graph, what fn returned during the capture): fn runs `warmup` times on a side stream first, so that
    modules load and kernels compile outside the capture, then once under capture."""
    graphs, out = capture_chain([lambda _: fn()], warmup)
    return graphs[0], out


def capture_chain(stages: Sequence[Callable[[Any], Any]], warmup: int = 1) -> tuple[list[torch.cuda.CUDAGraph], Any]:
    """One graph per stage, replayed in order: stages[0](None) returns what stages[1] takes, and so on; the
    last stage's result is returned. The chain runs `warmup` times on a side stream first, then each stage is
    captured in turn into one shared memory pool (tensors a stage hands on stay alive in what it returns)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            carry = None
            for stage in stages:
                carry = stage(carry)
    torch.cuda.current_stream().wait_stream(side)
    graphs: list[torch.cuda.CUDAGraph] = []
    carry = None
    for stage in stages:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=graphs[0].pool() if graphs else None):
            carry = stage(carry)
        graphs.append(graph)
    return graphs, carry


class Replay:
    """fn(*inputs) recorded once over static copies of its first inputs. A call copies its inputs into them and
    replays; it returns the static outputs, which the next call overwrites.

    fn may be a sequence of stages instead: stages[0](*inputs) -> carry, stages[i](carry) -> carry, the last
    carry being the outputs. Each stage is its own graph, launched in turn: the GPU starts on the first while
    the host still launches the rest, so a short first stage cuts the latency of a long chain of kernels."""

    def __init__(self, fn: Callable[..., Any] | Sequence[Callable[..., Any]], *inputs: torch.Tensor, warmup: int = 2):
        self.inputs = tuple(x.clone() for x in inputs)
        stages = list(fn) if isinstance(fn, Sequence) else [fn]
        first, rest = stages[0], stages[1:]
        self.graphs, self.outputs = capture_chain([lambda _: first(*self.inputs), *rest], warmup=warmup)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x)
        for graph in self.graphs:
            graph.replay()
        return self.outputs

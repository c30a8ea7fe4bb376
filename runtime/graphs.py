"""CUDA graph capture, the one way ds4c records work for replay: the decode step (runtime/llm.py), the
tuner's timing (tuning_db/measure.py) and the benchmarks (ds4c/benchmark/measure.py)."""

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

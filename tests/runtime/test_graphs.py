"""CUDA graph chains (runtime/graphs.py) on a GPU: stages recorded as separate graphs in one memory pool replay
in order and compute what the same code does eagerly, with tensors handed from one stage to the next."""

import pytest
import torch

from ds4c.runtime.graphs import Replay, capture_chain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _eager(x, w):
    h = torch.relu(x @ w)
    return (h * 2 + x).sum(dim=1), h


def _stages(w):
    def first(x):
        h = torch.relu(x @ w)  # allocated in the first graph, read and dropped in the second
        return {"x": x, "h": h}

    def second(env):
        h = env.pop("h")
        y = (h * 2 + env["x"]).sum(dim=1)  # allocated in the second graph, from the shared pool
        return y, h

    return [first, second]


def test_a_chain_replays_like_eager_code_on_fresh_inputs():
    torch.manual_seed(0)
    x, w = torch.randn(67, 45, device="cuda"), torch.randn(45, 45, device="cuda")
    replay = Replay(_stages(w), x)
    assert len(replay.graphs) == 2
    for _ in range(3):
        x = torch.randn(67, 45, device="cuda")
        got = replay(x)
        want = _eager(x, w)
        torch.cuda.synchronize()
        for g, e in zip(got, want, strict=True):
            torch.testing.assert_close(g, e)


def test_a_single_callable_is_one_graph():
    x = torch.randn(5, 7, device="cuda")
    replay = Replay(lambda t: t * 3, x)
    assert len(replay.graphs) == 1
    torch.testing.assert_close(replay(x + 1), (x + 1) * 3)


def test_capture_chain_returns_the_last_stage_result():
    graphs, out = capture_chain([lambda _: torch.ones(4, device="cuda"), lambda t: t + 1])
    assert len(graphs) == 2
    for g in graphs:
        g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, torch.full((4,), 2.0, device="cuda"))

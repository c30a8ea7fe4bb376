"""bench/profile_prefill.py's per-prefill spans from profiler events (no GPU): prefills told apart by the
widest gaps between kernels, each one's first-to-last-kernel span and the idle time inside it."""

from __future__ import annotations

from types import SimpleNamespace


class _Prof:
    def __init__(self, events):
        self._events = events

    def events(self):
        return self._events


def _kernel(start, end, name="k", device="DeviceType.CUDA"):
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_spans_split_calls_at_the_widest_gaps(bench_script):
    # call 1: kernels 0-10, 12-20 (2 idle); call 2 after a 500 us host sync: 520-530, 530-560, 575-580 (15 idle)
    evs = [_kernel(12, 20), _kernel(0, 10), _kernel(520, 530), _kernel(530, 560), _kernel(575, 580),
           _kernel(100, 400, device="DeviceType.CPU"), _kernel(20, 300, name="Memset (Device)")]
    spans = bench_script("profile_prefill").spans(_Prof(evs), calls=2)
    assert spans == [{"span_us": 20, "idle_us": 2, "kernels": 2}, {"span_us": 60, "idle_us": 15, "kernels": 3}]


def test_one_call_and_no_kernels(bench_script):
    mod = bench_script("profile_prefill")
    assert mod.spans(_Prof([_kernel(5, 9), _kernel(9, 20)]), calls=1) == [{"span_us": 15, "idle_us": 0,
                                                                           "kernels": 2}]
    assert mod.spans(_Prof([]), calls=3) == []

"""Measurement primitives of the benchmark: timestamps (CUDA events on a GPU, perf_counter on a CPU),
quantiles, NVML energy and SM clock, kernel launches seen by the profiler, and peak memory.

Nothing here synchronises the GPU between timestamps; `Stamps.elapsed_ms` synchronises once at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stamps:
    """A sequence of timestamps; elapsed_ms() gives the times between consecutive marks."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:], strict=False)]

    def total_ms(self) -> float:
        """Time from the first mark to the last."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return self.marks[0].elapsed_time(self.marks[-1])
        return (self.marks[-1] - self.marks[0]) * 1e3


def timed_calls(fn: Callable[[], object], n: int, device: torch.device) -> tuple[list[float], object]:
    """Milliseconds of n calls of fn, each started on an idle device (synchronised before it), so each time is
    a latency with the host's overhead in it; and the last call's result."""
    times, out = [], None
    for _ in range(n):
        sync(device)
        st = Stamps(device)
        st.mark()
        out = fn()
        st.mark()
        times.append(st.total_ms())
    return times, out


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty list, as numpy's default method."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    median: float
    p10: float
    p90: float

    @staticmethod
    def of(xs: list[float]) -> Stats:
        return Stats(quantile(xs, 0.5), quantile(xs, 0.1), quantile(xs, 0.9))


# --- energy -------------------------------------------------------------------------------------------

class EnergyMeter:
    """Total energy of the GPU in millijoules via NVML (nvidia-ml-py's `pynvml`).

    open() returns (meter, None) or (None, note) when NVML, the module or the counter is missing.
    """

    def __init__(self, nvml, handle):
        self._nvml = nvml
        self._handle = handle

    @staticmethod
    def open(device: torch.device) -> tuple[EnergyMeter | None, str | None]:
        if device.type != "cuda":
            return None, "no energy counter on a CPU"
        try:
            import pynvml
        except ImportError:
            return None, "pynvml (nvidia-ml-py) not installed: no energy figure"
        try:
            pynvml.nvmlInit()
            handle = _nvml_handle(pynvml, device)
            meter = EnergyMeter(pynvml, handle)
            meter.read_mj()
            return meter, None
        except Exception as e:  # NVML errors are many classes; any of them means no figure
            return None, f"NVML energy counter unavailable: {e}"

    def read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def sm_clock_mhz(self) -> int:
        """The SM clock now (it falls below its maximum when the board reaches its power or thermal limit)."""
        return int(self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM))

    def temperature_c(self) -> int:
        """The GPU die temperature now: the same work draws more power on a hotter chip (leakage), so energy
        figures taken minutes apart compare only with their temperatures beside them."""
        return int(self._nvml.nvmlDeviceGetTemperature(self._handle, self._nvml.NVML_TEMPERATURE_GPU))


def energy_start(meter) -> tuple[float, int] | None:
    """The wall clock and the counter's reading at the start of a measured window; None without a meter."""
    if meter is None:
        return None
    t0 = time.perf_counter()
    return t0, meter.read_mj()


def energy_since(meter, start, device: torch.device, units: int) -> tuple[float | None, float | None]:
    """(joules per unit, mean watts) over the window since energy_start; (None, None) without a meter.

    The watts divide the energy by the wall time of the same window the counter covered (the timed work
    and the host's few microseconds between its loops), so they are the GPU's mean power over that window.
    """
    if meter is None:
        return None, None
    sync(device)
    t0, e0 = start
    joules = (meter.read_mj() - e0) / 1e3
    seconds = time.perf_counter() - t0  # read after the counter: the window holds all the energy counted
    return joules / units, (joules / seconds if seconds > 0 else None)


def wait_cool(meter, target_c: float | None, timeout_s: float = 120.0, period_s: float = 0.5,
              sleep: Callable[[float], None] = time.sleep) -> tuple[float | None, float]:
    """Idle until the GPU is at most target_c degrees (or timeout_s passed), so that engines measured one after
    another start their energy windows from the same thermal state rather than from the heat of the engine
    before. Returns (the temperature read last, seconds waited); (None, 0) without a target, a meter or a
    thermometer."""
    if target_c is None or meter is None:
        return None, 0.0
    waited = 0.0
    while True:
        try:
            temp = float(meter.temperature_c())
        except Exception:  # no thermometer: no wait
            return None, waited
        if temp <= target_c or waited >= timeout_s:
            return temp, waited
        sleep(period_s)
        waited += period_s


class ClockSampler:
    """The mean SM clock and GPU temperature over the work of a with-block: a thread reads
    meter.sm_clock_mhz() (and meter.temperature_c(), where the meter has it) every period_s (NVML calls leave
    the interpreter lock free). A mean is None without a meter or a reading."""

    def __init__(self, meter, period_s: float = 0.01):
        self.meter, self.period_s = meter, period_s
        self.samples: list[float] = []
        self.temps: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClockSampler:
        if self.meter is not None:
            self._thread = threading.Thread(target=self._run, name="ds4c-clock-sampler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(float(self.meter.sm_clock_mhz()))
            except Exception:  # no clock figure rather than no benchmark
                return
            try:
                self.temps.append(float(self.meter.temperature_c()))
            except Exception:  # a meter without a thermometer: clocks alone
                pass
            if self._stop.wait(self.period_s):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean_mhz(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None

    @property
    def mean_temp_c(self) -> float | None:
        return sum(self.temps) / len(self.temps) if self.temps else None


def _nvml_handle(pynvml, device: torch.device):
    """The NVML handle of a CUDA device, by PCI bus id when torch knows it (CUDA_VISIBLE_DEVICES reorders)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        dom = getattr(props, "pci_domain_id", 0)
        dev = getattr(props, "pci_device_id", 0)
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(f"{dom:08x}:{bus:02x}:{dev:02x}.0".encode())
        except Exception:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def driver_version() -> str:
    """The NVIDIA driver version, "none" without a GPU, "unknown" when it cannot be read."""
    if not torch.cuda.is_available():
        return "none"
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        pass
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return out.strip().splitlines()[0]
    except Exception:
        return "unknown"


# --- kernel launches ------------------------------------------------------------------------------------

_NOT_KERNELS = ("memcpy", "memset")


def is_kernel(event) -> bool:
    """A profiler event that is a GPU kernel (memcpy and memset are not kernels)."""
    dt = getattr(event, "device_type", None)
    return dt is not None and "CUDA" in str(dt) and not any(w in event.name.lower() for w in _NOT_KERNELS)


def count_kernels(events) -> int:
    """Number of GPU kernel events among profiler events."""
    return sum(map(is_kernel, events))


def launches_per_step(step, steps: int, device: torch.device) -> tuple[float | None, str | None]:
    """GPU kernels the profiler records during `steps` calls of step(i), divided by steps."""
    if device.type != "cuda":
        return None, "launch count needs a CUDA device"
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(i)
        sync(device)
    n = count_kernels(prof.events())
    if n == 0:
        return None, "profiler saw no GPU kernels (CUDA graph nodes not traced?)"
    return n / steps, None


# --- memory -------------------------------------------------------------------------------------------

def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset_peak, GiB; None on a CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def unread_gib(model: torch.nn.Module, reads: list[torch.Tensor]) -> float:
    """GiB of the model's parameters that share storage with none of `reads`: weights an engine reading only
    those tensors lets go when it loads a checkpoint itself (ds4c-mixed keeps int8 copies of its FFN and head
    weights), but that the benchmark's one model object keeps for the other engines."""
    read = {t.untyped_storage().data_ptr() for t in reads}
    unread: dict[int, int] = {}
    for p in model.parameters():
        storage = p.untyped_storage()
        if storage.data_ptr() not in read:
            unread[storage.data_ptr()] = storage.nbytes()
    return sum(unread.values()) / 2**30


def free_memory(device: torch.device) -> None:
    """Drop compiled graphs and cached blocks, so one engine's leftovers do not weigh on the next."""
    import gc

    try:
        torch._dynamo.reset()
    except Exception:
        pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def guarded(fn):
    """Run a measurement; a failure becomes a record entry ({"error": ...}) instead of ending the run."""
    try:
        return fn()
    except Exception as e:  # recorded, not hidden
        return {"error": f"{type(e).__name__}: {e}"}


def graph_replay(fn):
    """fn recorded as a CUDA graph (after one warm-up run on a side stream); returns the replay callable."""
    from ds4c.runtime.graphs import capture

    return capture(fn)[0].replay

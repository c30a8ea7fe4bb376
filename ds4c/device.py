"""What the code runs on: a CUDA GPU, or the CPU under the Triton interpreter.

Read at call time (never at import time), so tests can switch TRITON_INTERPRET per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import torch


def interpreting() -> bool:
    """True when Triton kernels run under the interpreter (TRITON_INTERPRET=1), on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def default_device() -> torch.device:
    """The device kernels run on: CUDA when present and not interpreting, else CPU (interpreter)."""
    if torch.cuda.is_available() and not interpreting():
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass(frozen=True)
class GpuInfo:
    """The facts about a GPU that decide which kernel configs are valid and which tuning entries apply."""

    name: str  # "NVIDIA H200", or "triton-interpreter"
    capability: tuple[int, int]  # (9, 0); (0, 0) for the interpreter
    sm_count: int
    smem_per_block: int  # bytes of shared memory one program may use (opt-in maximum)
    regs_per_sm: int
    l2_bytes: int

    @property
    def is_interpreter(self) -> bool:
        return self.capability == (0, 0)


# The interpreter as a device: programs run one after another in numpy, so there is no shared memory or
# register file to fit; what costs time is the number of programs.
INTERPRETER = GpuInfo("triton-interpreter", (0, 0), sm_count=4, smem_per_block=1 << 30,
                      regs_per_sm=1 << 30, l2_bytes=50 * 1024 * 1024)

# The H200 as torch reports it: to plan for it, test its validity rules, or replay its timing records on a
# machine without one.
H200 = GpuInfo("NVIDIA H200", (9, 0), sm_count=132, smem_per_block=232448, regs_per_sm=65536,
               l2_bytes=60 * 1024 * 1024)


@cache
def _cuda_info(index: int) -> GpuInfo:
    p = torch.cuda.get_device_properties(index)
    smem = getattr(p, "shared_memory_per_block_optin", 0) or 48 * 1024
    regs = getattr(p, "regs_per_multiprocessor", 65536)
    l2 = getattr(p, "L2_cache_size", 0)
    return GpuInfo(p.name, (p.major, p.minor), p.multi_processor_count, smem, regs, l2)


def current_gpu() -> GpuInfo:
    """The GpuInfo of the device kernels run on now."""
    if default_device().type == "cuda":
        return _cuda_info(torch.cuda.current_device())
    return INTERPRETER

"""Test setup: without a CUDA GPU, Triton kernels run under the interpreter on CPU tensors.

Every test gets its own ds4c cache directory, so no test reads another's kernels or tuning results, and none
sees the $DS4C_DB of the shell that runs it.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DS4C_CACHE_DIR", str(tmp_path_factory.mktemp("ds4c-cache")))
    monkeypatch.delenv("DS4C_DB", raising=False)  # a user's shared tuning database stays out of the tests


@pytest.fixture
def device():
    from ds4c.device import default_device

    return default_device()


@pytest.fixture
def ds4c_runs(monkeypatch):
    """One entry per run of a ds4c Executable (a graph left on ATen as captured adds none)."""
    from ds4c.runtime.executor import Executable

    calls = []
    real = Executable.__call__

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(Executable, "__call__", counted)
    return calls

"""The scripts under bench/ are files, not modules of the package: tests import them by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_script(monkeypatch):
    """bench_script("profile_prefill") imports bench/profile_prefill.py as a fresh module."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, mod)  # dataclasses resolve their annotations through it
        spec.loader.exec_module(mod)
        return mod

    return load

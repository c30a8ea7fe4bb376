"""Load generated kernel modules from source text or from a plan's files.

Triton reads a kernel's source through `inspect`, so each module must live in a real file: sources given as
text are written once to the user's cache directory, named by their hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def cache_dir() -> Path:
    """The user's ds4c cache: $DS4C_CACHE_DIR, else $XDG_CACHE_HOME/ds4c, else ~/.cache/ds4c."""
    env = os.environ.get("DS4C_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ds4c"


_LOADED: dict[str, ModuleType] = {}


def load_file(path: str | os.PathLike) -> ModuleType:
    """Import the Python file at path as a fresh module (cached by resolved path and content)."""
    p = Path(path).resolve()
    text = p.read_bytes()
    key = f"{p}:{hashlib.sha256(text).hexdigest()}"
    if key in _LOADED:
        return _LOADED[key]
    name = f"ds4c_kernel_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load kernel module {p}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # triton's JIT looks the module up by name
    spec.loader.exec_module(mod)
    _LOADED[key] = mod
    return mod


def load_source(source: str) -> ModuleType:
    """Import generated source text (written to the cache directory once, named by its hash)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    d = cache_dir() / "kernels"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"k_{digest}.py"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    return load_file(path)

"""The wheel: every package folder maps under ds4c/ (with all kernel templates), nothing lands at the top
level, and the entry points declare the `ds4c` console script and the torch.compile backend.

The source tree is copied to a temporary folder first, so the build writes nothing into the repository.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "README.md", "ds4c", "passes", "runtime", "kernel_templates", "tuning_db", "tests"]
PACKAGES = {"ds4c/passes": ROOT / "passes", "ds4c/runtime": ROOT / "runtime", "ds4c/tuning_db": ROOT / "tuning_db",
            "ds4c/models": ROOT / "ds4c" / "models", "ds4c/benchmark": ROOT / "ds4c" / "benchmark",
            "ds4c/kernel_templates": ROOT / "kernel_templates", "ds4c": ROOT / "ds4c"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(dist), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=dist)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = dist.glob("ds4c-*.whl")
    with zipfile.ZipFile(whl) as z:
        yield z


def _names(z: zipfile.ZipFile) -> set[str]:
    return set(z.namelist())


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_module_is_packaged(wheel, package):
    names = _names(wheel)
    sources = sorted(p.name for p in PACKAGES[package].glob("*.py"))
    assert sources, f"no sources found for {package}"
    missing = [s for s in sources if f"{package}/{s}" not in names]
    assert not missing, missing


def test_every_kernel_template_is_packaged(wheel):
    templates = sorted(p.name for p in (ROOT / "kernel_templates").glob("*.py.j2"))
    assert templates
    missing = [t for t in templates if f"ds4c/kernel_templates/{t}" not in _names(wheel)]
    assert not missing, missing


def test_nothing_at_the_top_level(wheel):
    tops = {n.split("/", 1)[0] for n in _names(wheel)}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"ds4c"}, tops
    assert not any(n.startswith("ds4c/tests/") or n.endswith("conftest.py") for n in _names(wheel))


def test_entry_points(wheel):
    (ep,) = [n for n in _names(wheel) if n.endswith(".dist-info/entry_points.txt")]
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in wheel.read(ep).decode().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif "=" in line and current is not None:
            key, value = (s.strip() for s in line.split("=", 1))
            current[key] = value
    assert sections.get("console_scripts", {}).get("ds4c") == "ds4c.cli:main", sections
    assert sections.get("torch_dynamo_backends", {}).get("ds4c") == "ds4c.backend:ds4c_backend", sections

"""bench/prefill_variants.py's arms (no GPU): the settings parsed from the command line, and their effect on
a rendered dual-weight matmul module: the flatten constant set, the TMA launch's stage count replaced, and an
arm without settings putting back what the module had."""

from __future__ import annotations

import pytest

from ds4c.kernel_templates import _mm_common as C
from ds4c.kernel_templates import get
from ds4c.runtime import loader


def test_parse_arm(bench_script):
    s = bench_script("prefill_variants")
    assert s.parse_arm("tuned") == ("tuned", {})
    assert s.parse_arm("f3:flatten=1:stages=3") == ("f3", {"flatten": 1, "stages": 3})
    for bad in ("x:flatten", "x:stages=three", "x:warps=4"):
        with pytest.raises(SystemExit):
            s.parse_arm(bad)


def test_arms_patch_the_dual_module_only(monkeypatch, bench_script):
    T = get("matmul")
    dual = loader.load_source(T.source(C.problem(64, 32, 64, "float32", dual=True, epilogue=C.SWIGLU)))
    single = loader.load_source(T.source(C.problem(64, 32, 64, "float32")))
    seen = []
    monkeypatch.setattr(dual, "_launch_tma", lambda *a, **kw: seen.append(kw["num_stages"]) or True)
    s = bench_script("prefill_variants")
    flatten0, single_launch = dual._TMA_FLATTEN, single._launch_tma

    s.apply_arm({"flatten": 0, "stages": 2})
    assert dual._TMA_FLATTEN is False
    dual._launch_tma(num_stages=4)
    s.apply_arm({"flatten": 1})
    assert dual._TMA_FLATTEN is True
    dual._launch_tma(num_stages=4)
    s.apply_arm({})
    assert dual._TMA_FLATTEN is flatten0
    dual._launch_tma(num_stages=5)
    assert seen == [2, 4, 5]
    assert single._launch_tma is single_launch  # one weight: left as it is

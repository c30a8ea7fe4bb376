"""A compiled model lives as long as references to it: compiling opens the tuning database, whose first
import (optuna) must not pin the frames of the call, and with them the weights the plan derived."""

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import gc, sys, weakref
    import torch
    from ds4c.compiler import Options
    from ds4c.llm import compile_llm
    from ds4c.models.configs import BUILTIN
    from ds4c.models.llama import Llama, init_random

    assert "optuna" not in sys.modules
    model = init_random(Llama(BUILTIN["tiny-llama"], max_seq_len=16, dtype=torch.float32), seed=0)
    options = Options(precision="mixed", db_url=sys.argv[1], use_cache=False)
    compiled = compile_llm(model, prefill_len=8, options=options)
    assert "optuna" in sys.modules
    derived = [weakref.ref(t) for k, t in compiled.runner._prefill.values.items() if k.startswith("derived:quant")]
    assert derived
    del compiled
    gc.collect()
    print("alive", sum(r() is not None for r in derived), "of", len(derived))
""")


def test_dropping_a_compiled_model_frees_its_derived_weights(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", _SCRIPT, f"sqlite:///{tmp_path / 'tuning.db'}"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("alive 0 of "), last

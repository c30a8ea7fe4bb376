"""Shared fixtures of the end-to-end CLI tests: one tiny-llama checkpoint (with a tokenizer) compiled once
with `ds4c compile --report`, reused read-only by the tests that run or inspect the plan."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from e2e_helpers import COMPILE_FLAGS, invoke, write_checkpoint, write_tokenizer


@dataclass(frozen=True)
class Compiled:
    checkpoint: Path
    plan_dir: Path
    weights: dict
    output: str  # what `ds4c compile --report` printed
    seed: int


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> Compiled:
    root = tmp_path_factory.mktemp("e2e")
    seed = int(torch.randint(0, 2**31, ()))
    ckpt = root / "tiny-llama"
    weights = write_checkpoint(ckpt, seed)
    write_tokenizer(ckpt / "tokenizer.json")
    plan_dir = root / "plan"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DS4C_CACHE_DIR", str(root / "cache"))
        result = invoke("compile", str(ckpt), "-o", str(plan_dir), *COMPILE_FLAGS, "--report")
    assert result.exit_code == 0, (result.output, result.exception)
    return Compiled(ckpt, plan_dir, weights, result.output, seed)

"""Helpers for the end-to-end tests of the `ds4c` command: tiny real checkpoints, a byte-level tokenizer,
in-process and subprocess invocations, and the checks every user error must pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from ds4c.cli import main
from ds4c.models.configs import BUILTIN
from ds4c.models.llama import Llama, init_random

CFG = BUILTIN["tiny-llama"]
PREFILL, MAX_SEQ = 8, 32
COMPILE_FLAGS = ["--prefill-len", str(PREFILL), "--max-seq-len", str(MAX_SEQ), "--dtype", "float32"]


def write_checkpoint(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """A Hugging Face style tiny-llama folder (config.json + model.safetensors); returns the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    model = init_random(Llama(CFG, max_seq_len=MAX_SEQ), seed)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}  # no non-persistent buffers
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CFG.to_hf()))
    return weights


def write_tokenizer(path: Path) -> None:
    """A byte-level BPE with no merges: 256 ids, all inside tiny-llama's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CFG.vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world"], trainer=trainer)
    assert tok.get_vocab_size() <= CFG.vocab_size
    tok.save(str(path))


def invoke(*args: str) -> Result:
    """`ds4c ARGS` in this process; an exception that escaped the CLI stays on result.exception."""
    return CliRunner().invoke(main, list(args))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TRITON_INTERPRET", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`ds4c ARGS` as a user runs it: the venv's console script if installed, else `python -m ds4c.cli`."""
    script = Path(sys.executable).parent / "ds4c"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "ds4c.cli"]
    return subprocess.run(cmd + list(args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)


def assert_user_error(result: Result, names: str | Path, fragment: str = "") -> str:
    """Non-zero exit through click (no escaped exception), one line of output naming the file, no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"escaped exception: {result.exception!r}"
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert str(names) in lines[0] and fragment in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(out_dir: Path) -> None:
    """The plan directory does not exist and no temporary sibling of it is left behind."""
    assert not out_dir.exists()
    leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]
    assert not leftovers, leftovers

"""`ds4c compile` and `ds4c run` on bad input: one line naming the file, a non-zero exit code, no traceback,
and no plan directory (or temporary sibling) left behind."""

import json
import os
import shutil
import struct

import pytest
import torch
from e2e_helpers import (
    COMPILE_FLAGS,
    assert_nothing_written,
    assert_user_error,
    invoke,
    run_subprocess,
    write_checkpoint,
)
from safetensors.torch import load_file, save_file


def _truncate(folder):
    f = folder / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1 - int(torch.randint(0, 1000, ())))
    return f, "truncated"


def _truncate_to_nothing(folder):
    f = folder / "model.safetensors"
    os.truncate(f, 5)
    return f, "truncated"


def _corrupt_header(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\xff" * 12  # the header's JSON starts at byte 8
    f.write_bytes(bytes(data))
    return f, "corrupt header"


def _huge_header_length(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = struct.pack("<Q", 2**40)
    f.write_bytes(bytes(data))
    return f, "corrupt header"


def _unsupported_architecture(folder):
    f = folder / "config.json"
    d = json.loads(f.read_text())
    d["architectures"] = ["GPT2LMHeadModel"]
    f.write_text(json.dumps(d))
    return f, "GPT2LMHeadModel"


def _config_not_json(folder):
    f = folder / "config.json"
    f.write_text("{not json")
    return f, "JSON"


def _missing_config(folder):
    (folder / "config.json").unlink()
    return folder / "config.json", "missing config.json"


def _missing_folder(folder):
    shutil.rmtree(folder)
    return folder, "no such checkpoint"


def _missing_tensor(folder):
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["lm_head.weight"]
    save_file(tensors, str(f))
    return f, "lm_head.weight"


def _wrong_shape(folder):
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    tensors["model.norm.weight"] = torch.ones(tensors["model.norm.weight"].numel() + 1)
    save_file(tensors, str(f))
    return f, "model.norm.weight"


BREAKAGES = [_truncate, _truncate_to_nothing, _corrupt_header, _huge_header_length, _unsupported_architecture,
             _config_not_json, _missing_config, _missing_folder, _missing_tensor, _wrong_shape]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_compile_rejects_bad_checkpoint(breakage, tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, seed=int(torch.randint(0, 2**31, ())))
    bad_file, fragment = breakage(folder)
    out = tmp_path / "plan"
    assert_user_error(invoke("compile", str(folder), "-o", str(out), *COMPILE_FLAGS), bad_file, fragment)
    assert_nothing_written(out)


def test_compile_error_in_a_real_process_has_no_traceback(tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, seed=int(torch.randint(0, 2**31, ())))
    bad_file, _ = _truncate(folder)
    out = tmp_path / "plan"
    proc = run_subprocess("compile", str(folder), "-o", str(out), *COMPILE_FLAGS, cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(bad_file) in lines[0], proc.stderr
    assert proc.stdout == ""
    assert_nothing_written(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing written into the working directory


def test_run_without_plan_json(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke("run", str(empty), "--prompt", "hi"), empty, "no plan.json")
    missing = tmp_path / "missing"
    assert_user_error(invoke("run", str(missing), "--prompt", "hi"), missing, "no plan.json")
    assert not missing.exists()


def test_run_plan_from_an_older_ds4c(compiled, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(compiled.plan_dir, old)
    d = json.loads((old / "plan.json").read_text())
    d["format_version"] = 0
    (old / "plan.json").write_text(json.dumps(d))
    line = assert_user_error(invoke("run", str(old), "--prompt", "hi"), old / "plan.json", "format 0")
    assert "from an older ds4c" in line and "compile" in line


def test_run_plan_with_a_missing_kernel(compiled, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(compiled.plan_dir, broken)
    victim = sorted((broken / "kernels").glob("*.py"))[0]
    victim.unlink()
    assert_user_error(invoke("run", str(broken), "--prompt", "hi"), victim, "missing kernel")


def test_run_without_tokenizer(tmp_path):
    """Compiled without -o, the plan lands beside the checkpoint; running it needs tokenizer.json."""
    folder = tmp_path / "tiny"
    write_checkpoint(folder, seed=int(torch.randint(0, 2**31, ())))
    result = invoke("compile", str(folder), *COMPILE_FLAGS)
    assert result.exit_code == 0, (result.output, result.exception)
    plan_dir = tmp_path / "tiny-ds4c"
    assert (plan_dir / "plan.json").is_file()
    assert_user_error(invoke("run", str(plan_dir), "--prompt", "hi"), folder / "tokenizer.json", "missing")


def test_run_plan_compiled_from_a_builtin_name(tmp_path):
    plan_dir = tmp_path / "builtin"
    result = invoke("compile", "tiny-llama", "-o", str(plan_dir), *COMPILE_FLAGS)
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((plan_dir / "plan.json").read_text())["meta"]["builtin"] == "tiny-llama"
    assert_user_error(invoke("run", str(plan_dir), "--prompt", "hi"), plan_dir, "built-in")


def test_run_prompt_longer_than_the_bucket(compiled):
    long_prompt = "x" * 50  # one id per byte with the tokenizer the fixture wrote
    assert_user_error(invoke("run", str(compiled.plan_dir), "--prompt", long_prompt), compiled.plan_dir,
                      "prefill bucket")

"""`ds4c compile` then `ds4c run` on a real tiny checkpoint: the report, the plan directory, logits of the
saved plan against the eager model (fp32), determinism of compilation, and generated text."""

import json

import torch
from e2e_helpers import CFG, COMPILE_FLAGS, MAX_SEQ, PREFILL, invoke

from ds4c.checkpoint import load_weights
from ds4c.models.llama import Llama, reset_cache
from ds4c.precision import TOLERANCE, assert_close
from ds4c.runtime.llm import LLMRunner, load_kernels
from ds4c.runtime.plan import load
from ds4c.tokenizer import load_tokenizer


def _eager(compiled) -> Llama:
    model = Llama(CFG, max_seq_len=MAX_SEQ)
    model.load_state_dict(compiled.weights, strict=True)
    reset_cache(model)
    return model


def _runner(plan_dir, device) -> LLMRunner:
    from safetensors.torch import load_file

    plan = load(plan_dir)
    weights = load_weights(plan.meta["checkpoint"], dtype=torch.float32, device=device)
    saved = load_file(str(plan_dir / "state.safetensors"))
    return LLMRunner(plan, load_kernels(plan, plan_dir), weights, saved, torch.device(device))


def test_report_and_plan_directory(compiled):
    out = compiled.output
    assert "fusion groups" in out and "on ATen" in out and "wrote " in out
    assert {p.name for p in compiled.plan_dir.iterdir()} == {"plan.json", "kernels", "state.safetensors"}
    plan = load(compiled.plan_dir)
    files = {p.name for p in (compiled.plan_dir / "kernels").glob("*.py")}
    assert files == {k.file.removeprefix("kernels/") for k in plan.kernels.values()} and files
    assert set(plan.graphs) == {"prefill", "decode"}
    assert plan.meta["prefill_len"] == PREFILL and plan.meta["max_seq_len"] == MAX_SEQ
    assert plan.meta["checkpoint"] == str(compiled.checkpoint.resolve())
    assert plan.meta["dtype"] == "float32"


def test_saved_plan_matches_eager(compiled, device):
    runner = _runner(compiled.plan_dir, device)
    reference = _eager(compiled).to(device)
    n = 3 + int(torch.randint(0, PREFILL - 3, ()))  # a right-padded prompt of n tokens
    tokens = torch.randint(0, CFG.vocab_size, (1, PREFILL), device=device)
    last = torch.tensor([n - 1], device=device)
    with torch.no_grad():
        assert_close(runner.prefill(tokens, last).cpu(), reference.prefill(tokens, last).cpu(), torch.float32,
                     f"prefill (seed {compiled.seed})")
        for pos in range(n, n + 4):
            tok = torch.randint(0, CFG.vocab_size, (1, 1), device=device)
            p = torch.tensor([pos], device=device)
            assert_close(runner.decode(tok, p).cpu(), reference.decode(tok, p).cpu(), torch.float32,
                         f"decode at {pos} (seed {compiled.seed})")


def test_compiling_twice_gives_the_same_plan(compiled, tmp_path):
    again = tmp_path / "again"
    result = invoke("compile", str(compiled.checkpoint), "-o", str(again), *COMPILE_FLAGS, "--report")
    assert result.exit_code == 0, (result.output, result.exception)
    first, second = (json.loads((d / "plan.json").read_text()) for d in (compiled.plan_dir, again))
    assert first == second
    assert (compiled.plan_dir / "plan.json").read_bytes() == (again / "plan.json").read_bytes()
    for f in (compiled.plan_dir / "kernels").iterdir():
        assert f.read_bytes() == (again / "kernels" / f.name).read_bytes(), f.name


def _greedy(model: Llama, ids: list[int], steps: int) -> list[int] | None:
    """Eager greedy tokens; None when a top-2 logit gap is within the fp32 tolerance (TF32 on a GPU), where
    the plan may legitimately pick the other token."""
    out, pos = [], len(ids)
    with torch.no_grad():
        logits = model.prefill(torch.tensor([ids]), torch.tensor([len(ids) - 1]))
        for _ in range(steps):
            top = logits[0].topk(2).values
            if top[0] - top[1] < 10 * TOLERANCE[torch.float32].rel * logits[0].square().mean().sqrt():
                return None
            out.append(int(logits[0].argmax()))
            logits = model.decode(torch.tensor([[out[-1]]]), torch.tensor([pos]))
            pos += 1
    return out


def test_run_prints_the_greedy_continuation(compiled):
    result = invoke("run", str(compiled.plan_dir), "--prompt", "hello", "--max-new-tokens", "3")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.stdout.startswith("hello") and len(result.stdout.rstrip("\n")) > len("hello")
    assert "3 tokens" in result.stderr
    tok = load_tokenizer(compiled.checkpoint)
    expected = _greedy(_eager(compiled), tok.encode("hello"), 3)
    if expected is not None:  # argmax near a tie may legitimately differ
        assert result.stdout == "hello" + tok.decode(expected) + "\n"

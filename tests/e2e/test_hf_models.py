"""torch.compile(model, backend="ds4c") on Hugging Face transformers models (tiny random configs): the
logits equal eager's, and ds4c's kernels ran. These are the graphs users bring: lifted tensor constants
(an empty KV cache), masked attention (Mistral's sliding window), q/k/v split from one projection and a
partial rotary embedding (GPT-NeoX), the tanh GELU's x ** 3 (GPT-2), and a library's custom op (the
grouped expert matmul of Mixtral's mixture of experts), which runs as a step between ds4c's kernels."""

import logging
import random

import pytest
import torch

from ds4c.precision import assert_close

T = pytest.importorskip("transformers")
V = 320
ATTN = dict(num_hidden_layers=2, num_attention_heads=4)

MODELS = {
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                      num_key_value_heads=2, **ATTN)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                      num_key_value_heads=2, **ATTN)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                            num_key_value_heads=2, sliding_window=5, **ATTN)),
    "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                   pad_token_id=0, **ATTN)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, bos_token_id=1,
                                                   eos_token_id=2)),
    "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                             **ATTN)),
    "bert": lambda: T.BertModel(T.BertConfig(vocab_size=V, hidden_size=64, intermediate_size=96, **ATTN)),
    "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                            num_key_value_heads=2, num_local_experts=4,
                                                            num_experts_per_tok=2, **ATTN)),
}


def _first(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", MODELS)
def test_hugging_face_model_through_the_backend(name, device, caplog, ds4c_runs):
    torch.manual_seed(random.randint(0, 2**31))
    model = MODELS[name]().to(device).eval()
    ids = torch.randint(3, V, (2, 11), device=device)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ds4c")
    with caplog.at_level(logging.WARNING, logger="ds4c.backend"), torch.no_grad():
        ref = _first(model(input_ids=ids))
        out = _first(compiled(input_ids=ids))
    assert_close(out.float().cpu(), ref.float().cpu(), torch.float32, what=name)
    assert "running this graph on ATen" not in caplog.text
    assert ds4c_runs
    torch._dynamo.reset()


def test_gpt2_training_step_gives_eager_gradients(device, caplog, ds4c_runs):
    """A training forward returns constants beside its tensors (what its backward needs): the compiled
    forward returns them in their places, and the backward graph is compiled too."""
    caplog.set_level(logging.WARNING, logger="ds4c.backend")
    torch.manual_seed(random.randint(0, 2**31))
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, attn_pdrop=0.0,
                                           resid_pdrop=0.0, embd_pdrop=0.0)).to(device).double().train()
    ids = torch.randint(3, V, (2, 11), device=device)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ds4c")
    compiled(input_ids=ids, labels=ids).loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    for g, p in zip(got, model.parameters(), strict=True):
        assert_close(g.cpu(), p.grad.cpu())
    assert "running this graph on ATen" not in caplog.text
    assert len(ds4c_runs) >= 2  # forwards and backwards (one per graph dynamo makes)
    torch._dynamo.reset()


def test_logits_of_the_last_position_compute_one_row_after_the_last_attention(device, monkeypatch):
    """generate() asks for the last position's logits alone (logits_to_keep=1): the slice moves up through
    the head, the final norm and the last layer's FFN and o-projection (select_rows_early), and the logits
    still equal eager's."""
    import ds4c.compiler

    rows = []  # per compiled graph: the rows of each matmul, in graph order
    real = ds4c.compiler.run_pipeline

    def recording(g, passes):
        out = real(g, passes)
        ops = [out.nodes[n]["op"] for n in sorted(out.nodes, key=lambda n: out.nodes[n]["order"])]
        rows.append([op.problem["M"] for op in ops if op.target in ("kernel:matmul", "kernel:gemv")])
        return out

    monkeypatch.setattr(ds4c.compiler, "run_pipeline", recording)
    torch.manual_seed(random.randint(0, 2**31))
    model = MODELS["llama"]().to(device).eval()
    ids = torch.randint(3, V, (1, 11), device=device)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ds4c")
    with torch.no_grad():
        ref = model(input_ids=ids, logits_to_keep=1).logits
        out = compiled(input_ids=ids, logits_to_keep=1).logits
    assert out.shape == ref.shape == (1, 1, V)
    assert_close(out.float().cpu(), ref.float().cpu(), torch.float32, what="llama, last position")
    # the last layer's o-projection, gate/up (one SwiGLU kernel) and down, then the head, on one row; the
    # rest on all 11
    assert len(rows) == 1 and rows[0][-4:] == [1] * 4 and set(rows[0][:-4]) == {11}, rows
    torch._dynamo.reset()

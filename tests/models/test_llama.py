"""ds4c's Llama definition: cache correctness, an independent fp64 reference, export, configs."""

import math

import pytest
import torch

from ds4c.errors import Ds4cError
from ds4c.models.configs import BUILTIN, HF_CONFIGS
from ds4c.models.llama import (
    Llama,
    LlamaConfig,
    entry_point,
    expected_shapes,
    init_random,
    reset_cache,
    rope_tables,
)
from ds4c.precision import assert_close

TINY = BUILTIN["tiny-llama"]
# Qwen2-style q/k/v biases, tied head, llama3 rope scaling, 8 q-heads over 2 kv-heads: the other code paths.
TINY_QWEN = LlamaConfig.from_hf({
    **HF_CONFIGS["tiny-llama"], "architectures": ["Qwen2ForCausalLM"], "num_attention_heads": 8,
    "head_dim": 8, "tie_word_embeddings": True,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 16},
})


def _model(config, seed, max_seq_len=64, dtype=torch.float32):
    return init_random(Llama(config, max_seq_len=max_seq_len, dtype=dtype), seed, std=0.1)


def _reference_logits(model: Llama, tokens: torch.Tensor) -> torch.Tensor:
    """All-position logits in fp64, written independently of llama.py (explicit GQA repeat, complex rope)."""
    c = model.config
    p = {k: v.double() for k, v in model.state_dict().items()}
    t = tokens.shape[1]
    inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
    if c.rope_scaling:
        s = dict(c.rope_scaling)
        wl = 2 * math.pi / inv
        lo_wl, hi_wl = s["original_max_position_embeddings"] / s["low_freq_factor"], \
            s["original_max_position_embeddings"] / s["high_freq_factor"]
        smooth = (s["original_max_position_embeddings"] / wl - s["low_freq_factor"]) / \
            (s["high_freq_factor"] - s["low_freq_factor"])
        inv = torch.where(wl < hi_wl, inv, torch.where(wl > lo_wl, inv / s["factor"],
                                                       (1 - smooth) * inv / s["factor"] + smooth * inv))
    rot = torch.polar(torch.ones(t, c.head_dim // 2, dtype=torch.float64),
                      torch.outer(torch.arange(t, dtype=torch.float64), inv))

    def rope(x):  # x [t, h, d]: pairs are (i, i + d/2) in HF's rotate-half layout
        half = c.head_dim // 2
        z = torch.complex(x[..., :half], x[..., half:]) * rot[:, None, :]
        return torch.cat((z.real, z.imag), dim=-1)

    def norm(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps) * w

    def lin(x, name):
        y = x @ p[name + ".weight"].T
        return y + p[name + ".bias"] if name + ".bias" in p else y

    x = p["model.embed_tokens.weight"][tokens[0]]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    group = c.num_attention_heads // c.num_key_value_heads
    for i in range(c.num_hidden_layers):
        pre = f"model.layers.{i}."
        h = norm(x, p[pre + "input_layernorm.weight"])
        q = rope(lin(h, pre + "self_attn.q_proj").view(t, -1, c.head_dim))
        k = rope(lin(h, pre + "self_attn.k_proj").view(t, -1, c.head_dim)).repeat_interleave(group, dim=1)
        v = lin(h, pre + "self_attn.v_proj").view(t, -1, c.head_dim).repeat_interleave(group, dim=1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(c.head_dim)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + lin(torch.einsum("hqk,khd->qhd", att, v).reshape(t, -1), pre + "self_attn.o_proj")
        h = norm(x, p[pre + "post_attention_layernorm.weight"])
        gate = lin(h, pre + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(gate) * lin(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
    head = p.get("lm_head.weight", p["model.embed_tokens.weight"])
    return norm(x, p["model.norm.weight"]) @ head.T


@pytest.mark.parametrize("config", [TINY, TINY_QWEN], ids=["llama", "qwen2-llama3rope-tied"])
def test_prefill_and_decode_match_fp64_reference(config):
    seed = int(torch.randint(0, 2**31, ()))
    model = _model(config, seed)
    t = 13
    tokens = torch.randint(0, config.vocab_size, (1, t))
    ref = _reference_logits(model, tokens)
    # Right-padded prompt: the pad tokens after `last` must not change the result.
    padded = torch.cat([tokens, torch.randint(0, config.vocab_size, (1, 19 - t))], dim=1)
    logits = model.prefill(padded, torch.tensor([t - 1]))
    assert_close(logits, ref[-1:].float(), what=f"prefill seed {seed}")
    reset_cache(model)
    for i in range(t):  # step-by-step decode of the same tokens from an empty cache
        step = model.decode(tokens[:, i:i + 1], torch.tensor([i]))
        assert_close(step, ref[i:i + 1].float(), what=f"decode step {i} seed {seed}")


def test_decode_continues_prefill_cache():
    model = _model(TINY, int(torch.randint(0, 2**31, ())))
    tokens = torch.randint(0, TINY.vocab_size, (1, 9))
    full = model.score(tokens)[0]
    reset_cache(model)
    model.prefill(tokens[:, :5], torch.tensor([4]))
    for i in range(5, 9):
        assert_close(model.decode(tokens[:, i:i + 1], torch.tensor([i])), full[i:i + 1], what=f"pos {i}")
    assert_close(model.prefill(tokens, torch.tensor([8])), model.score(tokens)[0, -1:], what="score")


def test_buffers_dtypes_and_names():
    model = Llama(TINY, max_seq_len=32, dtype=torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32 and model.rope_cos.shape == (32, TINY.head_dim)
    cache = model.model.layers[0].self_attn.k_cache
    assert cache.dtype == torch.bfloat16 and cache.shape == (1, 2, 32, 16)
    assert set(model.state_dict()) == set(expected_shapes(TINY))  # caches and tables are non-persistent
    assert not any(p.requires_grad for p in model.parameters())
    assert model.to(torch.float16).rope_cos.dtype == torch.float32  # casts leave the tables fp32
    assert torch.equal(model.rope_cos, rope_tables(TINY, 32)[0])
    cos, _ = rope_tables(TINY, 32)
    assert torch.equal(cos[:, :8], cos[:, 8:]) and torch.equal(cos[0], torch.ones(16))


def test_init_random_is_seeded():
    a, b, c = (_model(TINY, s) for s in (3, 3, 4))
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


@pytest.mark.parametrize("entry", ["prefill", "decode"])
def test_export_at_aten_level(entry):
    model = _model(TINY, 0, max_seq_len=32)
    tokens = torch.randint(0, TINY.vocab_size, (1, 7 if entry == "prefill" else 1))
    index = torch.tensor([6 if entry == "prefill" else 3])
    if entry == "decode":
        model.prefill(torch.randint(0, TINY.vocab_size, (1, 3)), torch.tensor([2]))
    mod = entry_point(model, entry)
    ep = torch.export.export(mod, (tokens, index), strict=False)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("aten.scaled_dot_product_attention.default", "aten.index_copy_.default",
               "aten.index_select.default", "aten.linear.default", "aten.embedding.default"):
        assert op in ops, f"{op} missing from {sorted(ops)}"
    params = {s.target for s in ep.graph_signature.input_specs if s.kind.name == "PARAMETER"}
    assert params == set(expected_shapes(TINY))
    caches = [k for k, v in model.named_buffers() if "cache" in k]
    saved = {k: v.clone() for k, v in model.named_buffers() if "cache" in k}
    eager = getattr(model, entry)(tokens, index)
    for k in caches:  # same starting cache for the exported run
        dict(model.named_buffers())[k].copy_(saved[k])
    assert torch.equal(ep.module()(tokens, index), eager)


def test_builtin_configs():
    assert set(BUILTIN) == {"llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", "smollm2-135m", "tiny-llama"}
    assert dict(BUILTIN["llama-3.1-8b"].rope_scaling)["factor"] == 8.0
    assert BUILTIN["qwen2.5-7b"].attention_bias and BUILTIN["qwen2.5-7b"].head_dim == 128
    assert BUILTIN["smollm2-135m"].tie_word_embeddings and BUILTIN["llama-3.2-1b"].tie_word_embeddings
    for name, cfg in BUILTIN.items():
        assert LlamaConfig.from_hf(cfg.to_hf()) == cfg, name
        meta = Llama(cfg, max_seq_len=16, device="meta")
        shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
        assert shapes == expected_shapes(cfg), name
    n = sum(math.prod(s) for s in expected_shapes(BUILTIN["smollm2-135m"]).values())
    assert n == 134_515_008


@pytest.mark.parametrize("change, words", [
    ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel"),
    ({"architectures": None}, "None"),
    ({"hidden_size": None}, "invalid"),
    ({"architectures": ["MistralForCausalLM"], "sliding_window": 4}, "sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"num_key_value_heads": 3}, "multiple"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_from_hf_rejects(change, words):
    with pytest.raises(Ds4cError, match=words) as e:
        LlamaConfig.from_hf({**HF_CONFIGS["tiny-llama"], **change}, "ckpt/config.json")
    assert "ckpt/config.json" in str(e.value)


def test_from_hf_missing_fields():
    d = dict(HF_CONFIGS["tiny-llama"])
    del d["rms_norm_eps"], d["vocab_size"]
    with pytest.raises(Ds4cError, match="vocab_size, rms_norm_eps"):
        LlamaConfig.from_hf(d, "x/config.json")


def test_from_hf_transformers5_rope_parameters():
    d = {k: v for k, v in HF_CONFIGS["llama-3.2-1b"].items() if k not in ("rope_theta", "rope_scaling")}
    d["rope_parameters"] = {"rope_theta": 500000.0, **HF_CONFIGS["llama-3.2-1b"]["rope_scaling"]}
    assert LlamaConfig.from_hf(d) == BUILTIN["llama-3.2-1b"]


def test_meta_build_skips_random_init_and_restores_it():
    """On the meta device the layers are built without their random init (nothing to initialise); the
    classes' own init is back afterwards, so a model built on the CPU is initialised as usual."""
    linear_init, embedding_init = torch.nn.Linear.reset_parameters, torch.nn.Embedding.reset_parameters
    meta = Llama(BUILTIN["tiny-llama"], max_seq_len=16, device="meta")
    assert meta.model.layers[0].self_attn.q_proj.weight.is_meta
    assert torch.nn.Linear.reset_parameters is linear_init
    assert torch.nn.Embedding.reset_parameters is embedding_init
    cpu = Llama(BUILTIN["tiny-llama"], max_seq_len=16)
    w = cpu.model.layers[0].self_attn.q_proj.weight
    assert w.std() > 0 and cpu.model.embed_tokens.weight.std() > 0

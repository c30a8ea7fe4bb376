"""The Llama family in plain PyTorch: what ds4c captures (torch.export, strict=False) before any pass runs.

Parameter names equal Hugging Face's, so an HF safetensors checkpoint loads with load_state_dict.
Two entry points, both free of graph breaks and data-dependent control flow:
    prefill(tokens [1,T], last [1]) -> logits [1, vocab]   (fills cache positions 0..T-1)
    decode(token [1,1], pos [1])    -> logits [1, vocab]   (one step at position pos)
The KV cache ([1, Hkv, max_seq_len, head_dim] per layer) and the rope tables ([max_seq_len, head_dim], fp32)
are non-persistent buffers. `entry_point(model, "decode")` gives an nn.Module to export for one entry point.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ds4c.errors import Ds4cError

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "rms_norm_eps", "max_position_embeddings")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, object], ...] | None  # None, or the llama3 dict's sorted items
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v biases (Qwen2)
    architecture: str = "LlamaForCausalLM"

    @staticmethod
    def from_hf(d: dict, path: object = "config.json") -> LlamaConfig:
        """From a Hugging Face config.json dict; Ds4cError naming `path` for anything ds4c cannot run."""
        archs = d.get("architectures") or []
        arch = archs[0] if isinstance(archs, list) and archs else None
        if arch not in ARCHITECTURES:
            raise Ds4cError(f"architecture {arch!r} has no ds4c definition (supported: "
                            f"{', '.join(ARCHITECTURES)})", path)
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise Ds4cError(f"missing field(s) {', '.join(missing)}", path)
        _check_unsupported(d, arch, path)
        heads = d["num_attention_heads"]
        rope_params = d.get("rope_parameters") or {}  # transformers >= 5 keeps theta and scaling here
        theta = rope_params.get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or (rope_params if rope_params.get("rope_type") else None)
        try:
            cfg = LlamaConfig(
                vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]), num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=int(heads),
                num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
                rms_norm_eps=float(d["rms_norm_eps"]), rope_theta=float(theta),
                rope_scaling=_rope_scaling(scaling, path),
                max_position_embeddings=int(d["max_position_embeddings"]),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                attention_bias=arch == "Qwen2ForCausalLM", architecture=arch)
        except (TypeError, ValueError, ZeroDivisionError) as e:
            raise Ds4cError(f"invalid field value: {e}", path) from None
        dims = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                cfg.num_key_value_heads, cfg.head_dim, cfg.max_position_embeddings)
        if min(dims) <= 0 or cfg.num_attention_heads % cfg.num_key_value_heads:
            raise Ds4cError("sizes must be positive and num_attention_heads a multiple of "
                            "num_key_value_heads", path)
        return cfg

    def to_hf(self) -> dict:
        """The config.json dict Hugging Face writes for this model (round-trips through from_hf)."""
        d = {"architectures": [self.architecture],
             "model_type": {"MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}.get(
                 self.architecture, "llama"),
             "hidden_act": "silu"}
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
                  "max_position_embeddings", "tie_word_embeddings"):
            d[k] = getattr(self, k)
        d["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        if self.architecture == "LlamaForCausalLM":
            d["attention_bias"] = False
        return d


def _check_unsupported(d: dict, arch: str, path: object) -> None:
    if arch == "LlamaForCausalLM" and (d.get("attention_bias") or d.get("mlp_bias")):
        raise Ds4cError("attention_bias/mlp_bias true is not supported for LlamaForCausalLM", path)
    if d.get("hidden_act", "silu") != "silu":
        raise Ds4cError(f"hidden_act {d['hidden_act']!r} is not supported (only silu)", path)
    window = d.get("sliding_window")
    uses_window = d.get("use_sliding_window", arch == "MistralForCausalLM")
    if uses_window and window is not None and window < d.get("max_position_embeddings", 0):
        raise Ds4cError(f"sliding_window {window} is not supported (ds4c attends to the full context)", path)


def _rope_scaling(s: dict | None, path: object) -> tuple | None:
    if not s:
        return None
    kind = s.get("rope_type", s.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise Ds4cError(f"rope scaling {kind!r} is not supported (only llama3)", path)
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if any(k not in s for k in keys):
        raise Ds4cError(f"llama3 rope_scaling needs {', '.join(keys)}", path)
    return tuple(sorted([("rope_type", "llama3")] + [(k, s[k]) for k in keys]))


def rope_tables(config: LlamaConfig, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_seq_len, head_dim] in fp32, HF layout (the two halves repeat), llama3 scaling applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if config.rope_scaling:
        s = dict(config.rope_scaling)
        factor, old_len = s["factor"], s["original_max_position_embeddings"]
        low, high = s["low_freq_factor"], s["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As HF Llama: variance in fp32, normalise, cast back, then the weight multiply.
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig, max_seq_len: int):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.n_head * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.n_head * c.head_dim, c.hidden_size, bias=False)
        shape = (1, self.n_kv, max_seq_len, c.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def forward(self, x, cos, sin, positions, mask):
        """x [1,T,hidden]; cos/sin [T,head_dim]; positions [T]; mask None (prefill, causal) or [1,1,1,S]."""
        t = x.shape[1]
        q = self.q_proj(x).view(1, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        self.k_cache.index_copy_(2, positions, k)
        self.v_cache.index_copy_(2, positions, v)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(1, t, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: LlamaConfig, max_seq_len: int):
        super().__init__()
        self.self_attn = Attention(c, max_seq_len)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, positions, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, c: LlamaConfig, max_seq_len: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c, max_seq_len) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


@contextlib.contextmanager
def _without_random_init(skip: bool):
    """Construct Linear and Embedding layers without their random initialisation when skip: meta tensors
    hold no values to initialise, and initialising them costs more than the rest of the construction."""
    saved = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Embedding)} if skip else {}
    try:
        for cls in saved:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn


class Llama(nn.Module):
    """Inference-only Llama/Mistral/Qwen2 with a static KV cache. Parameters do not require grad."""

    def __init__(self, config: LlamaConfig, max_seq_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        self.config = config
        self.max_seq_len = max_seq_len or min(config.max_position_embeddings, 4096)
        with torch.device(device), _without_random_init(torch.device(device).type == "meta"):
            self.model = Decoder(config, self.max_seq_len)
            if not config.tie_word_embeddings:
                self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.to(dtype)  # caches follow the model dtype; the rope tables below stay fp32
        cos, sin = rope_tables(config, self.max_seq_len)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)
        self.requires_grad_(False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        cur = self._buffers.get("rope_cos")
        if cur is not None and cur.dtype != torch.float32:  # a dtype cast (.to(bf16)): rebuild in fp32
            cos, sin = rope_tables(self.config, self.max_seq_len)
            self.rope_cos, self.rope_sin = cos.to(cur.device), sin.to(cur.device)
        return self

    def forward(self, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return self.prefill(tokens, last)

    def prefill(self, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """tokens int64 [1,T] (right-padded), last int64 [1] = real length - 1 -> logits [1, vocab]."""
        return _prefill(self, tokens, last)

    def decode(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """token int64 [1,1] at position pos int64 [1] -> logits [1, vocab]."""
        return _decode(self, token, pos)

    def score(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits at every position [1, T, vocab] (for perplexity); fills the cache like prefill."""
        return _head(self, _hidden(self, tokens, None))


def _hidden(m, tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """Run the decoder layers; pos None means prefill at positions 0..T-1 (causal attention)."""
    if pos is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        mask = None
    else:
        positions = pos
        mask = (torch.arange(m.rope_cos.shape[0], device=tokens.device) <= pos).view(1, 1, 1, -1)
    cos = m.rope_cos.index_select(0, positions)
    sin = m.rope_sin.index_select(0, positions)
    x = m.model.embed_tokens(tokens)
    for layer in m.model.layers:
        x = layer(x, cos, sin, positions, mask)
    return x


def _head(m, h: torch.Tensor) -> torch.Tensor:
    h = m.model.norm(h)
    if m.config.tie_word_embeddings:
        return F.linear(h, m.model.embed_tokens.weight)
    return m.lm_head(h)


def _prefill(m, tokens, last):
    h = _hidden(m, tokens, None).index_select(1, last)
    return _head(m, h).view(1, -1)


def _decode(m, token, pos):
    return _head(m, _hidden(m, token, pos)).view(1, -1)


class _Entry(nn.Module):
    """One entry point of a Llama as its own module; shares the Llama's parameters and buffers by name."""

    def __init__(self, llama: Llama, fn):
        super().__init__()
        self.config = llama.config
        for name, child in llama.named_children():
            self.add_module(name, child)
        for name, buf in llama.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=False)
        self._fn = fn

    def forward(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._fn(self, tokens, index)


def entry_point(model: Llama, name: str) -> nn.Module:
    """An exportable module whose forward is model.prefill or model.decode; parameter names stay HF's."""
    fns = {"prefill": _prefill, "decode": _decode}
    if name not in fns:
        raise ValueError(f"unknown entry point {name!r}; expected one of {sorted(fns)}")
    return _Entry(model, fns[name])


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter a checkpoint must provide (no lm_head.weight when tied)."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
              "model.norm.weight": (c.hidden_size,)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (q, c.hidden_size),
                   p + "self_attn.k_proj.weight": (kv, c.hidden_size),
                   p + "self_attn.v_proj.weight": (kv, c.hidden_size),
                   p + "self_attn.o_proj.weight": (c.hidden_size, q),
                   p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
                   p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
                   p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
                   p + "input_layernorm.weight": (c.hidden_size,),
                   p + "post_attention_layernorm.weight": (c.hidden_size,)}
        if c.attention_bias:
            shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.bias": (kv,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    return shapes


def init_random(model: Llama, seed: int, std: float = 0.02) -> Llama:
    """Fill every parameter from a seeded CPU generator: norms near 1, everything else N(0, std)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * std
        value = 1.0 + noise if name.endswith("norm.weight") else noise
        p.copy_(value.to(p.dtype))
    reset_cache(model)
    return model


def reset_cache(model: nn.Module) -> None:
    """Zero every layer's KV cache."""
    for name, buf in model.named_buffers():
        if name.endswith(("k_cache", "v_cache")):
            buf.zero_()

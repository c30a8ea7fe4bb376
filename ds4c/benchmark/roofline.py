"""Rooflines for the benchmark: ceilings measured in the same run, and the work a Llama step must do.

Ceilings: device-to-device copy bandwidth (bytes read + written per second) and the bf16 matmul rate of a
large square matmul on random data. Floors: a decode step must read every weight it uses once plus the KV
cache positions it attends to, so its floor is bytes / bandwidth; a prefill must do its matmul FLOPs, so its
floor is FLOPs / matmul rate. The counts are pure functions of the model's shape, testable without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds4c.benchmark.measure import Stamps, sync


@dataclass(frozen=True)
class Shape:
    """The numbers of a Llama-family decoder that the counts need."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int  # FFN intermediate size
    vocab: int
    qkv_bias: bool = False

    def layer_params(self) -> int:
        """Weights one decoder layer holds: q, k, v, o projections, gate/up/down, two norms (+ qkv bias)."""
        q = self.dim * self.n_heads * self.head_dim
        kv = 2 * self.dim * self.n_kv_heads * self.head_dim
        o = self.n_heads * self.head_dim * self.dim
        ffn = 3 * self.dim * self.hidden
        bias = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim if self.qkv_bias else 0
        return q + kv + o + ffn + 2 * self.dim + bias

    def layer_matmul_params(self) -> int:
        """Weights of one layer that take part in matmuls (no norms, no biases)."""
        return self.layer_params() - 2 * self.dim - (
            (self.n_heads + 2 * self.n_kv_heads) * self.head_dim if self.qkv_bias else 0)

    def kv_bytes_per_position(self, elem_bytes: int) -> int:
        """Bytes of K and V that one cached position holds across all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * elem_bytes


def shape_of(cfg) -> Shape:
    """The Shape of a ds4c.models.llama.LlamaConfig (Hugging Face field names)."""
    return Shape(dim=cfg.hidden_size, n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
                 n_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, hidden=cfg.intermediate_size,
                 vocab=cfg.vocab_size, qkv_bias=bool(cfg.attention_bias))


def decode_step_bytes(s: Shape, context: int, elem_bytes: int = 2) -> int:
    """Bytes one decode step must read: all layer weights, the final norm, the full lm_head matrix, one
    embedding row, and K and V of the `context` positions attended to (the new one included)."""
    weights = s.n_layers * s.layer_params() + s.dim + s.vocab * s.dim + s.dim
    return weights * elem_bytes + context * s.kv_bytes_per_position(elem_bytes)


def decode_floor_tok_s(s: Shape, prompt_len: int, decode_len: int, hbm_gb_s: float,
                       elem_bytes: int = 2) -> float:
    """Tokens per second if every decode step after a prompt of prompt_len ran at the copy bandwidth.

    Step i (0-based) attends to prompt_len + i + 1 positions; the floor is decode_len / sum(bytes_i / bw).
    """
    total = sum(decode_step_bytes(s, prompt_len + i + 1, elem_bytes) for i in range(decode_len))
    seconds = total / (hbm_gb_s * 1e9)
    return decode_len / seconds


def prefill_flops(s: Shape, prompt_len: int) -> float:
    """FLOPs of a prefill of prompt_len tokens returning the logits of one position: 2 * matmul weights
    per token, causal attention (QK^T and PV over T(T+1)/2 pairs per head), lm_head for one token."""
    t = prompt_len
    linear = 2.0 * s.n_layers * s.layer_matmul_params() * t
    attn = s.n_layers * s.n_heads * s.head_dim * 4.0 * (t * (t + 1) / 2)
    head = 2.0 * s.vocab * s.dim
    return linear + attn + head


def prefill_floor_ms(s: Shape, prompt_len: int, tflops: float) -> float:
    """Milliseconds of a prefill that ran every FLOP at the measured matmul rate."""
    return prefill_flops(s, prompt_len) / (tflops * 1e12) * 1e3


# --- ceilings, measured -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ceilings:
    hbm_gb_s: float  # device-to-device copy, bytes read + written per second / 1e9
    bf16_tflops: float  # square bf16 matmul on random data


def _best_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm up (allocations, cuBLAS heuristics)
    sync(device)
    st = Stamps(device)
    st.mark()
    for _ in range(repeats):
        fn()
        st.mark()
    times = st.elapsed_ms()
    times.sort()
    return times[len(times) // 2]  # median


def measure_copy_gb_s(device: torch.device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Copy bandwidth counting bytes read + written (2 * nbytes per copy)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = _best_ms(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure_matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10,
                          dtype: torch.dtype = torch.bfloat16) -> float:
    """Rate of an n^3 matmul on random data, 2 n^3 FLOPs per call."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    ms = _best_ms(lambda: torch.mm(a, b, out=out), device, repeats)
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


def measure_ceilings(device: torch.device, copy_bytes: int | None = None, matmul_n: int | None = None
                     ) -> Ceilings:
    """Both ceilings; full sizes on a GPU (1 GiB copy, 8192^3 matmul), small ones on a CPU."""
    cuda = device.type == "cuda"
    copy_bytes = copy_bytes or ((1 << 30) if cuda else (16 << 20))
    matmul_n = matmul_n or (8192 if cuda else 256)
    return Ceilings(hbm_gb_s=measure_copy_gb_s(device, copy_bytes),
                    bf16_tflops=measure_matmul_tflops(device, matmul_n, repeats=10 if cuda else 3))

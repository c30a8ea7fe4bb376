"""Text <-> token ids around a run: a `tokenizers` tokenizer.json plus the special ids a checkpoint names.

Encoding adds no BOS (SmolLM2 sets add_bos false; callers that want one prepend `bos_id`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from ds4c.checkpoint import tokenizer_path
from ds4c.errors import Ds4cError


@dataclass(frozen=True)
class Tokenizer:
    inner: _HFTokenizer
    eos_id: int | None
    bos_id: int | None

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.inner.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _special_id(inner: _HFTokenizer, folder: Path, key: str) -> int | None:
    """Id of bos/eos from tokenizer_config.json (token string) or config.json (id), else None."""
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        tok = json.loads(tc.read_text(encoding="utf-8")).get(f"{key}_token")
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str) and inner.token_to_id(tok) is not None:
            return inner.token_to_id(tok)
    cfg = folder / "config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text(encoding="utf-8")).get(f"{key}_token_id")
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            return value
    return None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder (or of a tokenizer.json path)."""
    p = tokenizer_path(path)
    try:
        inner = _HFTokenizer.from_file(str(p))
        eos, bos = _special_id(inner, p.parent, "eos"), _special_id(inner, p.parent, "bos")
    except Exception as e:  # tokenizers raises plain Exception for malformed files
        raise Ds4cError(f"cannot load tokenizer: {e}", p) from None
    return Tokenizer(inner, eos, bos)

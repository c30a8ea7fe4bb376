"""Hugging Face checkpoint folders -> (LlamaConfig, state dict), before capture. Every bad input raises
Ds4cError naming the file and the problem in one line.

A checkpoint path is a folder holding config.json beside model.safetensors (or a sharded
model.safetensors.index.json), or one .safetensors file inside such a folder.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from ds4c.errors import Ds4cError
from ds4c.models.llama import LlamaConfig, expected_shapes

_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved


def _folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        return p
    if p.suffix == ".safetensors" or p.name.endswith(".safetensors.index.json"):
        return p.parent
    if not p.exists():
        raise Ds4cError("no such checkpoint folder or file", p)
    raise Ds4cError("expected a checkpoint folder or a .safetensors file", p)


def _read_json(p: Path, what: str) -> object:
    if not p.is_file():
        raise Ds4cError(f"missing {what}", p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Ds4cError(f"unreadable or invalid JSON: {e}", p) from None


def load_config(path: str | Path) -> LlamaConfig:
    """The LlamaConfig of a checkpoint (its config.json)."""
    p = _folder(path) / "config.json"
    d = _read_json(p, "config.json")
    if not isinstance(d, dict):
        raise Ds4cError("config.json must hold a JSON object", p)
    return LlamaConfig.from_hf(d, p)


def tokenizer_path(path: str | Path) -> Path:
    """tokenizer.json of a checkpoint folder (or the path itself when it names a tokenizer.json)."""
    p = Path(path)
    p = p if p.name == "tokenizer.json" else _folder(p) / "tokenizer.json"
    if not p.is_file():
        raise Ds4cError("missing tokenizer.json", p)
    return p


def _shard_files(path: str | Path) -> dict[Path, list[str] | None]:
    """safetensors file -> names the index promises in it (None: whatever the file holds)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise Ds4cError("missing safetensors file", p)
        return {p: None}
    folder = _folder(p)
    index = p if p.name.endswith(".safetensors.index.json") else folder / "model.safetensors.index.json"
    if index.is_file():
        d = _read_json(index, "index")
        weight_map = d.get("weight_map") if isinstance(d, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise Ds4cError("index has no weight_map", index)
        shards: dict[Path, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(folder / str(shard), []).append(name)
        for shard in shards:
            if not shard.is_file():
                raise Ds4cError(f"shard named in {index.name} is missing", shard)
        return dict(shards)
    single = folder / "model.safetensors"
    if not single.is_file():
        raise Ds4cError("missing model.safetensors (and no model.safetensors.index.json)", single)
    return {single: None}


def check_safetensors(p: Path) -> dict[str, dict]:
    """Validate a safetensors file's header against its size; returns the header's tensor entries."""
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise Ds4cError(f"truncated: {size} bytes, no header", p)
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise Ds4cError(f"corrupt header: header length {n} does not fit a {size}-byte file", p)
            header = json.loads(f.read(n))
    except OSError as e:
        raise Ds4cError(f"unreadable: {e}", p) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Ds4cError(f"corrupt header: {e}", p) from None
    if not isinstance(header, dict):
        raise Ds4cError("corrupt header: not a JSON object", p)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = 0
    for name, t in tensors.items():
        try:
            begin, stop = t["data_offsets"]
            count = 1
            for s in t["shape"]:
                count *= int(s)
            nbytes = count * _ITEM_BYTES[t["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise Ds4cError(f"corrupt header entry for {name!r}", p) from None
        if stop - begin != nbytes:
            raise Ds4cError(f"corrupt header: {name!r} has {stop - begin} bytes for {nbytes} needed", p)
        end = max(end, stop)
    if 8 + n + end != size:
        raise Ds4cError(f"size mismatch (truncated?): file is {size} bytes, header says {8 + n + end}", p)
    return tensors


def _checked_shards(path: str | Path):
    """(shard file, its header entries) for every shard, each header checked and holding what the index
    promises it holds."""
    for shard, promised in _shard_files(path).items():
        entries = check_safetensors(shard)
        missing_here = sorted(set(promised or ()) - set(entries))
        if missing_here:
            raise Ds4cError(f"tensor(s) named in the index are missing: {', '.join(missing_here[:5])}", shard)
        yield shard, entries


def load_weights(path: str | Path, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, checked by name and shape against its config, keyed like Llama's state dict.

    With tie_word_embeddings the head is the embedding: a stored lm_head.weight is dropped.
    dtype (if given) converts floating tensors.
    """
    config = load_config(path)
    want = expected_shapes(config)
    out: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for shard, _ in _checked_shards(path):
        try:
            with safe_open(str(shard), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    if name in out:
                        raise Ds4cError(f"tensor {name!r} also in {where[name].name}", shard)
                    if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and name not in want):
                        continue
                    t = f.get_tensor(name)
                    out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
                    where[name] = shard
        except Ds4cError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt data
            raise Ds4cError(f"unreadable safetensors data: {e}", shard) from None
    _check_against(out, want, where, path)
    return out


def check_checkpoint(path: str | Path) -> LlamaConfig:
    """The checkpoint's LlamaConfig, after checking every safetensors header (size, tensor names and shapes)
    against it without reading tensor data: what `ds4c compile` checks before capturing."""
    config = load_config(path)
    found: dict[str, torch.Tensor] = {}  # meta tensors: shapes only
    where: dict[str, Path] = {}
    for shard, entries in _checked_shards(path):
        for name, entry in entries.items():
            if name in found:
                raise Ds4cError(f"tensor {name!r} also in {where[name].name}", shard)
            if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and config.tie_word_embeddings):
                continue
            found[name] = torch.empty([int(s) for s in entry["shape"]], device="meta")
            where[name] = shard
    _check_against(found, expected_shapes(config), where, path)
    return config


def _check_against(out: dict, want: dict, where: dict, path: str | Path) -> None:
    first = next(iter(where.values()), Path(path))
    missing = sorted(set(want) - set(out))
    if missing:
        names = ", ".join(missing[:3])
        raise Ds4cError(f"{len(missing)} tensor(s) missing vs config.json, e.g. {names}", first)
    unexpected = sorted(set(out) - set(want))
    if unexpected:
        name = unexpected[0]
        raise Ds4cError(f"{len(unexpected)} unexpected tensor(s) vs config.json, e.g. {name}", where[name])
    for name, t in out.items():
        if tuple(t.shape) != want[name]:
            raise Ds4cError(f"tensor {name} has shape {tuple(t.shape)}, config.json implies {want[name]}",
                            where[name])

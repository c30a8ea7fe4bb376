"""Checkpoint loading: round trips (single, sharded, tied head) and a Ds4cError per kind of bad input."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from ds4c.checkpoint import load_config, load_weights, tokenizer_path
from ds4c.errors import Ds4cError
from ds4c.models.configs import BUILTIN, HF_CONFIGS
from ds4c.models.llama import Llama, LlamaConfig, init_random
from ds4c.tokenizer import load_tokenizer


def _write(folder, hf=None, tensors=None, seed=0):
    """A tiny-llama checkpoint folder; returns the state dict written."""
    folder.mkdir(parents=True, exist_ok=True)
    hf = hf or HF_CONFIGS["tiny-llama"]
    if tensors is None:
        model = init_random(Llama(BUILTIN["tiny-llama"], max_seq_len=8), seed)
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    (folder / "config.json").write_text(json.dumps(hf))
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


@pytest.fixture
def ckpt(tmp_path):
    folder = tmp_path / "tiny"
    return folder, _write(folder, seed=int(torch.randint(0, 2**31, ())))


def _raises(path, fragment, fn, *args):
    with pytest.raises(Ds4cError) as e:
        fn(*args)
    msg = str(e.value)
    assert str(path) in msg and fragment in msg, msg
    assert "\n" not in msg


def test_round_trip_single_file(ckpt):
    folder, tensors = ckpt
    assert load_config(folder) == BUILTIN["tiny-llama"]
    for path in (folder, folder / "model.safetensors", str(folder)):
        got = load_weights(path)
        assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in got)
    model = Llama(load_config(folder), max_seq_len=8)
    model.load_state_dict(load_weights(folder), strict=True)
    half = load_weights(folder, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in half.values())


def test_round_trip_sharded(ckpt, tmp_path):
    _, tensors = ckpt
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIGS["tiny-llama"]))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(folder / file))
    index = {"weight_map": {k: f for f, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    got = load_weights(folder)
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in got)
    # A shard the index names but the folder lacks.
    (folder / "model-00002-of-00002.safetensors").unlink()
    _raises(folder / "model-00002-of-00002.safetensors", "missing", load_weights, folder)
    # A tensor the index names but its shard lacks.
    save_file({k: tensors[k] for k in names[1::2][1:]}, str(folder / "model-00002-of-00002.safetensors"))
    _raises("model-00002-of-00002.safetensors", names[1::2][0], load_weights, folder)


def test_tied_head(tmp_path):
    hf = {**HF_CONFIGS["tiny-llama"], "tie_word_embeddings": True}
    model = init_random(Llama(LlamaConfig.from_hf(hf), max_seq_len=8), 1)
    tensors = dict(model.state_dict())
    assert "lm_head.weight" not in tensors
    # Some tied checkpoints also store the head: it is dropped, the embedding is the head.
    tensors["lm_head.weight"] = torch.randn(256, 64)
    _write(tmp_path / "t", hf, tensors)
    got = load_weights(tmp_path / "t")
    assert "lm_head.weight" not in got
    model.load_state_dict(got, strict=True)


def test_missing_or_bad_config(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    _raises(folder / "config.json", "missing config.json", load_config, folder)
    (folder / "config.json").write_text("{not json")
    _raises(folder / "config.json", "invalid JSON", load_config, folder)
    (folder / "config.json").write_text("[1, 2]")
    _raises(folder / "config.json", "JSON object", load_config, folder)
    bert = {**HF_CONFIGS["tiny-llama"], "architectures": ["BertModel"]}
    (folder / "config.json").write_text(json.dumps(bert))
    _raises(folder / "config.json", "BertModel", load_config, folder)
    _raises(tmp_path / "nowhere", "no such", load_config, tmp_path / "nowhere")


def test_missing_safetensors(ckpt):
    folder, _ = ckpt
    (folder / "model.safetensors").unlink()
    _raises(folder / "model.safetensors", "missing model.safetensors", load_weights, folder)
    _raises(folder / "other.safetensors", "missing", load_weights, folder / "other.safetensors")


def test_truncated_safetensors(ckpt):
    folder, _ = ckpt
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    _raises(f, "truncated", load_weights, folder)
    f.write_bytes(data[:5])
    _raises(f, "truncated", load_weights, folder)


def test_corrupt_header(ckpt):
    folder, _ = ckpt
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    _raises(f, "corrupt header", load_weights, folder)
    (n,) = struct.unpack("<Q", data[:8])
    f.write_bytes(data[:8] + b"x" * n + data[8 + n:])
    _raises(f, "corrupt header", load_weights, folder)
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [3]  # size no longer matches its byte range
    body = json.dumps(header).encode().ljust(n)
    f.write_bytes(data[:8] + body + data[8 + n:])
    _raises(f, "corrupt header", load_weights, folder)


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_tensors_vs_config(tmp_path, problem):
    model = init_random(Llama(BUILTIN["tiny-llama"], max_seq_len=8), 2)
    tensors = dict(model.state_dict())
    if problem == "missing":
        del tensors["model.layers.1.mlp.up_proj.weight"]
        fragment = "model.layers.1.mlp.up_proj.weight"
    elif problem == "unexpected":
        tensors["model.layers.2.mlp.up_proj.weight"] = torch.zeros(160, 64)
        fragment = "model.layers.2.mlp.up_proj.weight"
    else:
        tensors["model.norm.weight"] = torch.ones(65)
        fragment = "(65,)"
    _write(tmp_path / "m", tensors=tensors)
    _raises(tmp_path / "m" / "model.safetensors", fragment, load_weights, tmp_path / "m")


def test_tokenizer_path(ckpt):
    folder, _ = ckpt
    _raises(folder / "tokenizer.json", "missing tokenizer.json", tokenizer_path, folder)
    (folder / "tokenizer.json").write_text("{}")
    assert tokenizer_path(folder) == folder / "tokenizer.json"
    assert tokenizer_path(folder / "model.safetensors") == folder / "tokenizer.json"
    _raises(folder / "tokenizer.json", "cannot load tokenizer", load_tokenizer, folder)

"""fuse_rope_kv_write on the tiny Llama: per layer, the two ropes and the two KV-cache index_copy_ writes
become one rope_kv kernel that writes the caches in place (IR invariant 7); in prefill it also writes the
rotated k that the attention reads, q and k laid out [B, T, H, D]; the IR verifier rejects a reader of the old
cache value placed after that write. Then fuse_rope_into_decode_attention: a decode step's rope_kv goes into
the attention after it, unless something reads the written caches in between."""

import pytest
import torch
from pass_helpers import run

from ds4c.ir import IRError, Op, Ref, add_node, op_of, ordered, verify
from ds4c.llm import capture_llm
from ds4c.models.configs import BUILTIN
from ds4c.models.llama import Llama, init_random
from ds4c.passes.rope import fuse_rope_into_decode_attention
from ds4c.pipeline import default_passes

CFG = BUILTIN["tiny-llama"]


def _decode_after_fusion(graph="decode"):
    model = init_random(Llama(CFG, max_seq_len=24, dtype=torch.bfloat16), seed=0)
    g = capture_llm(model, prefill_len=8)[graph]
    passes = default_passes("bf16")
    return run(g, passes[: [p.__name__ for p in passes].index("fuse_rope_kv_write") + 1])


def test_one_kernel_per_layer_writes_both_caches():
    h = _decode_after_fusion()
    fused = [n for n in ordered(h) if op_of(h, n).target == "kernel:rope_kv"]
    assert len(fused) == CFG.num_hidden_layers
    assert not [n for n in h if op_of(h, n).target in ("kernel:rope", "aten.index_copy_.default")]
    for n in fused:
        op = op_of(h, n)
        assert op.writes == 2
        roles = [h.graph["roles"].get(a.node, "") for a in op.args[:2]]
        assert all(r.startswith("buffer:") and r.endswith(("k_cache", "v_cache")) for r in roles), roles
        # the caches' new values are the kernel's outputs 1 and 2, and the state mutations say so
        assert {h.graph["mutations"][r] for r in roles} == {Ref(n, 1), Ref(n, 2)}


def test_prefill_writes_the_rotated_k_for_its_attention():
    h = _decode_after_fusion("prefill")
    fused = [n for n in ordered(h) if op_of(h, n).target == "kernel:rope_kv"]
    assert len(fused) == CFG.num_hidden_layers
    assert not [n for n in h if op_of(h, n).target in ("kernel:rope", "aten.index_copy_.default")]
    hd = CFG.head_dim
    for n in fused:
        op = op_of(h, n)
        assert op.problem["k_out"] is True and op.problem["bthd"] is True and op.writes == 2
        assert [o.shape for o in op.outputs[:2]] == [(1, 8, CFG.num_attention_heads, hd),
                                                     (1, 8, CFG.num_key_value_heads, hd)]
        assert all(o.is_contiguous() for o in op.outputs[:2])
        roles = [h.graph["roles"].get(a.node, "") for a in op.args[:2]]
        assert {h.graph["mutations"][r] for r in roles} == {Ref(n, 2), Ref(n, 3)}
        # the attention reads q and k through transpose(1, 2) views of outputs 0 and 1, and v as it came
        attn = [u for u in h.successors(n) for a in h.successors(u)
                if op_of(h, u).target == "aten.transpose.int" and op_of(h, a).target == "kernel:flash_attention"]
        assert sorted(op_of(h, u).args[0].index for u in attn) == [0, 1]
        a = op_of(h, next(h.successors(attn[0])))
        assert a.args[2] == op.args[4]


def test_verify_rejects_a_read_of_the_old_cache_after_the_write():
    h = _decode_after_fusion()
    n = next(n for n in ordered(h) if op_of(h, n).target == "kernel:rope_kv")
    cache = op_of(h, n).args[0]
    t = op_of(h, cache.node).outputs[0]
    add_node(h, "late_read", Op("aten.clone.default", args=(cache,), outputs=(t,)), h.nodes[n]["order"] + 1e-3)
    with pytest.raises(IRError, match="after it was written in place"):
        verify(h)


def _through(name: str, graph: str = "decode"):
    model = init_random(Llama(CFG, max_seq_len=24, dtype=torch.bfloat16), seed=0)
    g = capture_llm(model, prefill_len=8)[graph]
    passes = default_passes("bf16")
    return run(g, passes[: [p.__name__ for p in passes].index(name) + 1])


def test_decode_rope_kv_goes_into_its_attention():
    """fuse_rope_into_decode_attention: per decode layer, rope_kv and decode_attention become one kernel that
    reads the unrotated q, k and v and writes both caches (outputs 1 and 2, which the mutations name)."""
    before = _through("fuse_rope_kv_write")
    h = _through("fuse_rope_into_decode_attention")
    fused = [n for n in ordered(h) if op_of(h, n).target == "kernel:decode_attention_rope"]
    assert len(fused) == CFG.num_hidden_layers
    assert not [n for n in h if op_of(h, n).target in ("kernel:rope_kv", "kernel:decode_attention")]
    ropes = [op_of(before, n) for n in ordered(before) if op_of(before, n).target == "kernel:rope_kv"]
    attns = [op_of(before, n) for n in ordered(before) if op_of(before, n).target == "kernel:decode_attention"]
    for n, rope, attn in zip(fused, ropes, attns, strict=True):
        op = op_of(h, n)
        assert op.writes == 2 and op.args == rope.args + (attn.args[3],)
        assert op.problem == {**attn.problem, "cos_dtype": rope.problem["cos_dtype"]}
        assert op.outputs == (attn.outputs[0],) + rope.outputs[1:]
        roles = [h.graph["roles"].get(a.node, "") for a in op.args[:2]]
        assert {h.graph["mutations"][r] for r in roles} == {Ref(n, 1), Ref(n, 2)}


def test_prefill_keeps_rope_kv():
    h = _through("fuse_rope_into_decode_attention", "prefill")
    assert len([n for n in h if op_of(h, n).target == "kernel:rope_kv"]) == CFG.num_hidden_layers
    assert not [n for n in h if op_of(h, n).target == "kernel:decode_attention_rope"]


def test_a_reader_of_the_written_cache_before_the_attention_blocks_the_fusion():
    """Moving the write to the attention's place would hand that reader the old cache: no fusion."""
    h = _through("fuse_rope_kv_write")
    n = next(n for n in ordered(h) if op_of(h, n).target == "kernel:rope_kv")
    t = op_of(h, n).outputs[1]
    early = add_node(h, "early_read", Op("aten.clone.default", args=(Ref(n, 1),), outputs=(t,)),
                     h.nodes[n]["order"] + 1e-4)
    h.graph["outputs"] = list(h.graph["outputs"]) + [Ref(early)]
    out = fuse_rope_into_decode_attention(h)
    verify(out)
    assert len([m for m in out if op_of(out, m).target == "kernel:rope_kv"]) == 1
    assert out.graph["stats"]["fuse_rope_into_decode_attention"] == CFG.num_hidden_layers - 1

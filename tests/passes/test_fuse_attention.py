"""fuse_attention: causal / plain sdpa -> flash_attention (also with grouped-query heads and through the
backend's aot_autograd spelling), one query against a cache with an `arange <= pos` mask -> decode_attention;
any other mask stays on ATen."""

import pytest
import torch
import torch.nn.functional as F
from pass_helpers import (
    Fn,
    bind,
    capture,
    capture_aten,
    check_numbers,
    count,
    execute,
    kernels,
    run,
    stats,
    targets,
    upto,
)

from ds4c.compiler import Options, make_chooser
from ds4c.kernel_templates.flash_attention import VENDOR_TILES
from ds4c.pipeline import default_passes
from ds4c.precision import assert_close


def _sdpa(causal, gqa=False):
    return lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


@pytest.mark.parametrize("causal,hq,hkv", [(True, 2, 2), (False, 2, 2), (True, 4, 2)])
def test_sdpa_to_flash_attention(causal, hq, hkv, device):
    mod = Fn(_sdpa(causal, hq != hkv), w=torch.randn(1))
    shapes = ((1, hq, 7, 16), (1, hkv, 7, 16), (1, hkv, 7, 16))
    g, state = capture(mod, tuple(torch.randn(s) for s in shapes))
    h = run(g, upto("fuse_attention"))
    assert stats(h)["fuse_attention.flash_attention"] == 1
    assert targets(h) == ["kernel:flash_attention"]
    p = h.nodes[next(iter(n for n in h if h.nodes[n]["op"].is_kernel))]["op"].problem
    assert (p["Hq"], p["Hkv"], p["T"], p["S"], p["D"], p["causal"]) == (hq, hkv, 7, 7, 16, causal)
    check_numbers(h, state, mod, tuple(torch.randn(s) for s in shapes), device)


def test_backend_spelling_to_flash_attention(device):
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    args = tuple(torch.randn(1, 2, 9, 32) for _ in range(3))
    g, _ = capture_aten(fn, args)
    assert any("scaled_dot_product" in t for t in targets(g))
    h = run(g, upto("fuse_attention"))
    assert kernels(h) == ["flash_attention"] and stats(h)["fuse_attention.flash_attention"] == 1
    args = tuple(torch.randn(1, 2, 9, 32) for _ in range(3))
    outs = execute(h, {}, args, device)
    assert_close(outs[0].cpu(), fn(*args))


def test_backend_spelling_with_a_mask_stays_aten(device):
    """aot_autograd passes the mask keyword-only (CPU) or as attn_bias (CUDA): a sliding-window mask, as
    Mistral's, is no causal or prefix mask, so the attention stays on ATen and keeps it."""
    i = torch.arange(9)
    window = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 4)
    mask = torch.zeros(9, 9).masked_fill(~window, float("-inf")).to(device)

    def fn(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    args = tuple(torch.randn(1, 2, 9, 32, device=device) for _ in range(3)) + (mask,)
    g, _ = capture_aten(fn, args)
    h = run(g, upto("fuse_attention"))
    assert "flash_attention" not in kernels(h) and "fuse_attention.flash_attention" not in stats(h)
    args = tuple(torch.randn(1, 2, 9, 32, device=device) for _ in range(3)) + (mask,)
    assert_close(execute(h, {}, args, device)[0].cpu(), fn(*args).cpu())


def test_causal_with_fewer_queries_than_keys_stays_aten(device):
    """SDPA aligns a causal mask top-left (query i sees keys j <= i); the kernels align it bottom-right."""
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    shapes = ((1, 2, 3, 16), (1, 2, 7, 16), (1, 2, 7, 16))
    g, _ = capture_aten(fn, tuple(torch.randn(s, device=device) for s in shapes))
    h = run(g, upto("fuse_attention"))
    assert "flash_attention" not in kernels(h)
    args = tuple(torch.randn(s, device=device) for s in shapes)
    assert_close(execute(h, {}, args, device)[0].cpu(), fn(*args).cpu())


def _decode(m, q, k_cache, v_cache, pos):
    mask = (torch.arange(k_cache.shape[2]) <= pos).view(1, 1, 1, -1)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True)


def test_prefix_mask_to_decode_attention(device):
    mod = Fn(_decode, w=torch.randn(1))
    shapes = ((1, 4, 1, 16), (1, 2, 11, 16), (1, 2, 11, 16))
    g, state = capture(mod, tuple(torch.randn(s) for s in shapes) + (torch.tensor([3]),))
    h = run(g, upto("fuse_attention"))
    assert stats(h)["fuse_attention.decode_attention"] == 1
    assert kernels(h) == ["decode_attention"] and count(h, "aten.scaled_dot_product_attention.default") == 0
    for pos in (0, 5, 10):
        args = tuple(torch.randn(s) for s in shapes) + (torch.tensor([pos]),)
        check_numbers(h, state, mod, args, device, what=f"pos {pos}")


def test_arbitrary_mask_stays_aten(device):
    mod = Fn(lambda m, q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), w=torch.randn(1))
    args = tuple(torch.randn(1, 2, 7, 16) for _ in range(3)) + (torch.rand(1, 1, 7, 7) > 0.3,)
    g, state = capture(mod, args)
    h = run(g, upto("fuse_attention"))
    assert not any(k.startswith("fuse_attention") for k in stats(h))
    assert targets(h) == ["aten.scaled_dot_product_attention.default"]
    mask = torch.rand(1, 1, 7, 7) > 0.3
    mask[..., 0] = True
    check_numbers(h, state, mod, tuple(torch.randn(1, 2, 7, 16) for _ in range(3)) + (mask,), device)


def test_head_dim_without_template_stays_aten():
    mod = Fn(_sdpa(True), w=torch.randn(1))
    g, _ = capture(mod, tuple(torch.randn(1, 2, 7, 24) for _ in range(3)))
    h = run(g, upto("fuse_attention"))
    assert kernels(h) == [] and not any(k.startswith("fuse_attention") for k in stats(h))


def _attend_then_merge_heads(m, q, k, v):
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1) @ m.w


def _attend_twice_read(m, q, k, v):
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1) @ m.w, o.sum()


@pytest.mark.parametrize("fn,fires", [(_attend_then_merge_heads, True), (_attend_twice_read, False)],
                         ids=["sole-transpose", "also-read-as-is"])
def test_attention_writes_tokens_major_for_the_output_projection(fn, fires, device):
    """flash_attention read only through transpose(1, 2) writes [B,T,Hq,D] itself (o_bthd), so no copy is
    left between attention and the output projection; another reader of [B,Hq,T,D] keeps the layout."""
    hkv = 2 if fires else 4
    shapes = ((1, 4, 9, 16), (1, hkv, 9, 16), (1, hkv, 9, 16))
    mod = Fn(fn, w=torch.randn(64, 8))
    g, state = capture(mod, tuple(torch.randn(s) for s in shapes))
    h = run(g, upto("write_attention_output_transposed"))
    attn = [h.nodes[n]["op"] for n in h if h.nodes[n]["op"].target == "kernel:flash_attention"]
    assert len(attn) == 1 and attn[0].problem.get("o_bthd", False) is fires
    assert stats(h).get("write_attention_output_transposed", 0) == int(fires)
    assert count(h, "aten.transpose.int") == (0 if fires else 1)
    if fires:
        assert attn[0].outputs[0].shape == (1, 9, 4, 16) and attn[0].outputs[0].is_contiguous()
    check_numbers(h, state, mod, tuple(torch.randn(s) for s in shapes), device)


def _attend_then_scale(m, q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True) * m.w


@pytest.mark.parametrize("fn", [_attend_then_scale, _attend_then_merge_heads], ids=["bhtd", "bthd"])
def test_vendor_attention_hands_back_its_own_output(fn, device):
    """A plan whose attention runs through torch's SDPA (IMPL 1) takes the tensor SDPA returned where it is
    laid out as the planned output (no copy), and its numbers are eager's either way. The math backend (CPU)
    returns [B,Hq,T,D] contiguous: the plain layout is taken as is, [B,T,Hq,D] is copied into the plan."""
    shapes = ((1, 4, 9, 16), (1, 2, 9, 16), (1, 2, 9, 16))
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32  # cuDNN's attention takes bf16, not fp32
    w = torch.randn(64, 8) if fn is _attend_then_merge_heads else torch.randn(1)
    mod, ref_mod = Fn(fn, w=w.to(dt)), Fn(fn, w=w.to(dt).double())
    g, state = capture(mod, tuple(torch.randn(s, dtype=dt) for s in shapes))
    h = run(g, default_passes("bf16"))
    default = make_chooser(Options(use_db=False))

    def choose(template, problem):
        return ({**VENDOR_TILES, "IMPL": 1}, "tuned") if template == "flash_attention" else default(template, problem)

    exe = bind(h, state, device, choose)
    lo, hi = exe.arena.data_ptr(), exe.arena.data_ptr() + exe.arena.numel()
    seen = []

    def after(i, step, env):
        if step.kind == "kernel" and step.fn.startswith("flash_attention"):
            seen.append(lo <= env[step.outputs[0]].data_ptr() < hi)

    inputs = tuple(torch.randn(s, dtype=dt) for s in shapes)
    out = exe(*(x.to(device) for x in inputs), after_step=after)
    assert_close(out[0].cpu(), ref_mod(*(x.double() for x in inputs)), dt, "vendor attention in a plan")
    if device.type == "cpu":
        assert seen == [fn is _attend_then_merge_heads]  # in the arena only where it was copied there
    else:
        assert len(seen) == 1

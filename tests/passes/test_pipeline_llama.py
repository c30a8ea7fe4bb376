"""The whole default pipeline on the built-in tiny Llama (fp32 and bf16): every rule fires the expected
number of times per layer, the IR stays valid after each pass, and prefill plus decode steps equal eager."""

import copy
import warnings

import pytest
import torch
from pass_helpers import run

from ds4c.compiler import Options
from ds4c.llm import capture_llm, compile_llm
from ds4c.models.configs import BUILTIN
from ds4c.models.llama import Llama, init_random, reset_cache
from ds4c.pipeline import default_passes
from ds4c.precision import assert_close

CFG = BUILTIN["tiny-llama"]
L = CFG.num_hidden_layers


def _model(dtype):
    return init_random(Llama(CFG, max_seq_len=24, dtype=dtype), seed=int(torch.randint(0, 2**31, ())))


def test_every_pass_keeps_the_ir_valid():
    graphs = capture_llm(_model(torch.bfloat16), prefill_len=8)
    for g in graphs.values():
        run(g, default_passes("bf16"))  # verify() after every pass, and no pass changes its input


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_llama_compiles_and_matches_eager(dtype, device):
    model = _model(dtype).to(device)
    compiled = compile_llm(model, prefill_len=8, options=Options(use_db=False))
    rules = {name: compiled.report[name]["rules"] for name in ("prefill", "decode")}
    for name, r in rules.items():
        assert r["fuse_rmsnorm"] == 2 * L + 1 and r["fold_rmsnorm_into_matmul"] == 2 * L + 1
        assert r["reinplace_state_writes"] == 2 * L and r["fuse_rope"] == 2 * L
        assert r["fuse_swiglu"] == L and r["merge_sibling_matmuls"] == 3 * L
        attention = "flash_attention" if name == "prefill" else "decode_attention"
        assert r[f"fuse_attention.{attention}"] == L
        # q and k rotated and both cache writes in one kernel per layer (prefill's also writes the rotated k
        # that its attention reads)
        assert r["fuse_rope_kv_write"] == L
        # a decode step's rope_kv goes into its attention: one launch per layer for both
        assert r.get("fuse_rope_into_decode_attention", 0) == (L if name == "decode" else 0)
        # prefill attention writes [B,T,H,D] for the o-projection (a decode step's transpose moves nothing),
        # except the last layer's: only the last position's row of it is read (select_rows_early)
        assert r.get("write_attention_output_transposed", 0) == (L - 1 if name == "prefill" else 0)
        assert ("select_rows_early" in r) == (name == "prefill")
        # bf16 casts the fp32 rope tables once per layer; after CSE once per graph
        assert r.get("eliminate_common_subexpressions", 0) == (2 * (L - 1) if dtype == torch.bfloat16 else 0)
        fallbacks = set(compiled.report[name]["fallbacks"])
        assert not any("mm" in t or "linear" in t or "attention" in t for t in fallbacks), fallbacks

    # the last layer's o-projection and FFN, the final norm and the head run on the last position alone
    plan = compiled.plan
    rows = [plan.kernels[s.fn].problem["M"] for s in plan.graphs["prefill"].steps
            if s.fn in plan.kernels and plan.kernels[s.fn].template in ("matmul", "gemv")]
    assert rows == [8] * (4 * L - 3) + [1] * 4, rows

    reference = copy.deepcopy(model).float()  # fp32 reference (the rope tables are fp32 in both)
    tokens = torch.randint(0, CFG.vocab_size, (1, 8), device=device)
    last = torch.tensor([5], device=device)  # a right-padded prompt of 6 tokens
    reset_cache(reference)
    compiled.runner.reset()
    assert_close(compiled.prefill(tokens, last).cpu(), reference.prefill(tokens, last).cpu(), dtype, "prefill")
    for pos in (6, 7, 8):
        tok = torch.randint(0, CFG.vocab_size, (1, 1), device=device)
        p = torch.tensor([pos], device=device)
        assert_close(compiled.decode(tok, p).cpu(), reference.decode(tok, p).cpu(), dtype, f"decode at {pos}")


def test_compiled_model_holds_weights_and_cache_once(device):
    """Bound to a module, the plan uses the module's own KV cache and keeps one copy of the weights: the
    projections it concatenates become views into the concatenation, with unchanged values."""
    model = _model(torch.float32).to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = compile_llm(model, prefill_len=8, options=Options(use_db=False))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    attn = model.model.layers[0].self_attn
    q, k, v = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert k.data_ptr() == q.data_ptr() + q.numel() * q.element_size()
    # the plan writes the module's cache: a prefill fills its first positions
    tokens = torch.randint(0, CFG.vocab_size, (1, 8), device=device)
    compiled.prefill(tokens, torch.tensor([7], device=device))
    assert attn.k_cache[:, :, :8].abs().sum() > 0 and attn.k_cache[:, :, 8:].abs().sum() == 0
    # and the module still runs eagerly, giving the compiled plan's numbers
    reset_cache(model)
    ref = model.prefill(tokens, torch.tensor([7], device=device))
    compiled.runner.reset()
    assert_close(compiled.prefill(tokens, torch.tensor([7], device=device)).cpu(), ref.cpu(), torch.float32)


def test_qwen2_style_qkv_biases(device):
    """q/k/v with biases (Qwen2) merge into one projection per layer and still give eager's numbers."""
    import dataclasses

    cfg = dataclasses.replace(CFG, attention_bias=True, architecture="Qwen2ForCausalLM")
    model = init_random(Llama(cfg, max_seq_len=24, dtype=torch.float32), seed=5).to(device)
    compiled = compile_llm(model, prefill_len=8, options=Options(use_db=False, use_cache=False))
    for name in ("prefill", "decode"):
        assert compiled.report[name]["rules"]["merge_sibling_matmuls"] == 3 * L
    reference = copy.deepcopy(model)
    tokens = torch.randint(0, CFG.vocab_size, (1, 8), device=device)
    last = torch.tensor([7], device=device)
    reset_cache(reference)
    compiled.runner.reset()
    assert_close(compiled.prefill(tokens, last).cpu(), reference.prefill(tokens, last).cpu(), torch.float32)
    tok, pos = torch.randint(0, CFG.vocab_size, (1, 1), device=device), torch.tensor([8], device=device)
    assert_close(compiled.decode(tok, pos).cpu(), reference.decode(tok, pos).cpu(), torch.float32)


class _FakeReplay:
    """Stands in for runtime.graphs.Replay where there is no CUDA: records how often each graph is recorded
    and runs fn on static copies of the inputs, as a replay does."""

    recorded: list = []

    def __init__(self, fn, *inputs, warmup=2):
        self.fn, self.inputs = fn, tuple(x.clone() for x in inputs)
        _FakeReplay.recorded.append(len(inputs))

    def __call__(self, *inputs):
        for s, x in zip(self.inputs, inputs, strict=True):
            s.copy_(x)
        return self.fn(*self.inputs)


class _BrokenReplay:
    def __init__(self, fn, *inputs, warmup=2):
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.mark.parametrize("replay", [_FakeReplay, _BrokenReplay])
def test_runner_records_prefill_and_decode_once(monkeypatch, replay, device):
    """Each of the two graphs is recorded on its first call and replayed after; one that cannot be recorded
    runs step by step with a warning, giving the same logits."""
    import ds4c.runtime.llm as rl

    monkeypatch.setattr(rl, "Replay", replay)
    _FakeReplay.recorded = []
    model = _model(torch.float32).to(device)
    reference = copy.deepcopy(model)
    compiled = compile_llm(model, prefill_len=8, options=Options(use_db=False))
    compiled.runner.use_graph = True
    assert compiled.runner.runs_as("prefill") == "not run yet"
    tokens = torch.randint(0, CFG.vocab_size, (1, 8), device=device)
    last = torch.tensor([7], device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled.prefill(tokens, last)
        assert_close(got.cpu(), reference.prefill(tokens, last).cpu(), torch.float32, "prefill")
        for pos in (8, 9, 10):
            tok = torch.randint(0, CFG.vocab_size, (1, 1), device=device)
            p = torch.tensor([pos], device=device)
            assert_close(compiled.decode(tok, p).cpu(), reference.decode(tok, p).cpu(), torch.float32,
                         f"decode at {pos}")
    fallbacks = [str(w.message) for w in caught if "step by step" in str(w.message)]
    assert len(fallbacks) == (0 if replay is _FakeReplay else 2)  # once per graph, not once per call
    assert _FakeReplay.recorded == ([2, 2] if replay is _FakeReplay else [])
    assert set(compiled.runner._replays) == {"prefill", "decode"}
    ran = "one CUDA graph replay" if replay is _FakeReplay else "step by step (recording failed)"
    assert compiled.runner.runs_as("prefill") == compiled.runner.runs_as("decode") == ran



def test_pdl_is_passed_only_to_kernels_that_support_it(monkeypatch, device):
    """With pdl on, the executor adds pdl=True to launches of modules that say SUPPORTS_PDL, and to no other;
    off (the default, and always off a Hopper GPU) nothing changes."""
    from ds4c.runtime.executor import Executable
    from ds4c.runtime.llm import load_kernels, pdl_supported

    assert not pdl_supported(torch.device("cpu"))
    model = _model(torch.float32).to(device)
    compiled = compile_llm(model, prefill_len=8, options=Options(use_db=False))
    runner = compiled.runner
    seen = {}
    kernels = {}
    modules = load_kernels(compiled.plan, sources=compiled.sources)
    plain = sorted(modules)[0]  # stands in for a kernel without PDL support
    for kid, mod in modules.items():
        def spy(*a, _kid=kid, _launch=mod.launch, **kw):
            seen.setdefault(_kid, kw.get("pdl"))
            return _launch(*a, **{k: v for k, v in kw.items() if k != "pdl"})

        kernels[kid] = type("Spy", (), {"launch": staticmethod(spy),
                                        "SUPPORTS_PDL": kid != plain and getattr(mod, "SUPPORTS_PDL", False)})
    plan = compiled.plan
    exe = Executable(plan.graphs["decode"], kernels, plan.kernels, runner._decode.values, device,
                     pdl=True)
    exe(torch.tensor([[3]], device=device), torch.tensor([8], device=device))
    supports = {kid: kernels[kid].SUPPORTS_PDL for kid in seen}
    assert any(supports.values()) and not all(supports.values())
    assert all(seen[kid] is (True if supports[kid] else None) for kid in seen)


def test_mixed_runner_lets_the_quantised_weights_go(device):
    """Precision "mixed": the runner holds the FFN and (untied) head weights only as int8 values and scales,
    every other parameter as given, and still matches eager within the int8 tolerance."""
    assert not CFG.tie_word_embeddings
    model = _model(torch.float32).to(device)
    compiled = compile_llm(model, prefill_len=8, options=Options(precision="mixed", use_db=False, use_cache=False))
    held = set(compiled.runner.weights)
    int8 = {k for k in dict(model.named_parameters()) if ".mlp." in k} | {"lm_head.weight"}
    assert len(int8) == 3 * L + 1 and not held & int8
    assert held == set(dict(model.named_parameters())) - int8
    tokens = torch.randint(0, CFG.vocab_size, (1, 8), device=device)
    last = torch.tensor([7], device=device)
    got = compiled.runner.prefill(tokens, last).float().clone()
    reset_cache(model)
    with torch.no_grad():
        want = model.prefill(tokens, last).float()
    assert_close(got, want, dtype=torch.int8)

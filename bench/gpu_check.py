"""GPU correctness check of the whole pipeline (not a benchmark): the kernel tests natively, SmolLM2-135M
greedy tokens against eager, and a random-weight Llama-3.1-8B-shaped model's logits against an fp32 copy.
Writes one record {"kind": "gpu-check", ...} to --out.

    python bench/gpu_check.py --out bench/results/gpu-check.json [--gguf PATH] [--pytest-log FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import triton

from ds4c.benchmark.record import git_commit
from ds4c.compiler import Options
from ds4c.llm import compile_llm
from ds4c.models.configs import BUILTIN
from ds4c.models.llama import Llama, reset_cache
from ds4c.precision import rel_error


def pytest_counts(log: str) -> dict:
    """passed/failed/skipped/errors from pytest's closing line."""
    counts = {}
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", log.splitlines()[-1] if log else ""):
        counts[word.rstrip("s") if word == "errors" else word] = int(n)
    return counts


@torch.no_grad()
def greedy(fn_prefill, fn_decode, ids: list[int], n: int, device) -> list[int]:
    tokens = torch.tensor([ids], device=device)
    logits = fn_prefill(tokens, torch.tensor([len(ids) - 1], device=device))
    out, pos = [], len(ids)
    for _ in range(n):
        nxt = int(logits[0].float().argmax())
        out.append(nxt)
        logits = fn_decode(torch.tensor([[nxt]], device=device), torch.tensor([pos], device=device))
        pos += 1
    return out


def check_smollm2(gguf: str, device) -> dict:
    from ds4c.checkpoint import load_config, load_weights
    from ds4c.gguf_convert import convert_gguf
    from ds4c.tokenizer import load_tokenizer

    folder = Path("/tmp/ds4c-smollm2")
    if not (folder / "config.json").exists():
        convert_gguf(gguf, folder)
    cfg = load_config(folder)
    model = Llama(cfg, max_seq_len=512, dtype=torch.bfloat16, device=device)
    model.load_state_dict(load_weights(folder, dtype=torch.bfloat16, device=device), strict=False)
    tok = load_tokenizer(folder / "tokenizer.json")
    prompt = "The capital of France is"
    ids = tok.encode(prompt)
    eager = greedy(model.prefill, model.decode, ids, 16, device)
    reset_cache(model)
    t0 = time.perf_counter()
    compiled = compile_llm(model, prefill_len=len(ids), options=Options(use_db=False))
    compile_s = time.perf_counter() - t0
    ours = greedy(compiled.prefill, compiled.decode, ids, 16, device)
    return {"prompt": prompt, "eager_tokens": eager, "ds4c_tokens": ours, "tokens_equal": eager == ours,
            "ds4c_text": tok.decode(ours), "compile_s": round(compile_s, 2), "report": compiled.report}


@torch.no_grad()
def init_on_device(model: Llama, seed: int, std: float = 0.02) -> None:
    """init_random's distribution drawn on the GPU (an 8B model takes minutes on the CPU)."""
    g = torch.Generator(device=model.rope_cos.device).manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) * std
        p.copy_((1.0 + noise if name.endswith("norm.weight") else noise).to(p.dtype))
    reset_cache(model)


def kernel_report(compiled, tokens, last, pos) -> dict:
    """Worst error per template over every kernel of both graphs, checked against its reference."""
    from ds4c.check import check_graph

    r = compiled.runner
    worst: dict = {}
    for graph, args in (("prefill", (tokens, last)), ("decode", (tokens[:, :1], pos))):
        exe = r._prefill if graph == "prefill" else r._decode
        for c in check_graph(exe, compiled.plan.kernels, *args):
            key = f"{graph}:{c.template}"
            if key not in worst or c.rel_error > worst[key]["rel_error"]:
                worst[key] = {"rel_error": c.rel_error, "bound": c.bound, "step": c.step, "kernel": c.kernel}
    return worst


def check_random(name: str, device, prompt_len: int = 64, kernels: bool = False) -> dict:
    import dataclasses

    base, _, layers = name.partition("@")  # "llama-3.1-8b@2": the same shapes with 2 layers
    cfg = BUILTIN[base]
    if layers:
        cfg = dataclasses.replace(cfg, num_hidden_layers=int(layers))
    model = Llama(cfg, max_seq_len=512, dtype=torch.bfloat16, device=device)
    init_on_device(model, 0)
    ref = Llama(cfg, max_seq_len=512, dtype=torch.float32, device=device)
    ref.load_state_dict(model.state_dict(), strict=False)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (1, prompt_len), generator=g).to(device)
    last = torch.tensor([prompt_len - 1], device=device)
    torch.backends.cuda.matmul.allow_tf32 = False
    want = ref.prefill(tokens, last).float()
    want_d = ref.decode(tokens[:, :1], torch.tensor([prompt_len], device=device)).float()
    del ref
    torch.cuda.empty_cache()
    eager = model.prefill(tokens, last).float()
    eager_d = model.decode(tokens[:, :1], torch.tensor([prompt_len], device=device)).float()
    reset_cache(model)
    compiled = compile_llm(model, prefill_len=prompt_len, options=Options(use_db=False))
    ours = compiled.prefill(tokens, last).float()
    ours_d = compiled.decode(tokens[:, :1], torch.tensor([prompt_len], device=device)).float()
    r = {"config": name, "prompt_len": prompt_len,
         "prefill_rel_err": {"eager": rel_error(eager, want), "ds4c": rel_error(ours, want)},
         "decode_rel_err": {"eager": rel_error(eager_d, want_d), "ds4c": rel_error(ours_d, want_d)},
         "kernels": compiled.report["decode"]["kernels"]}
    if kernels:
        reset_cache(model)
        compiled.runner.reset()
        r["kernel_check"] = kernel_report(compiled, tokens, last, torch.tensor([prompt_len], device=device))
    r["within_1.5x_of_eager"] = all(r[k]["ds4c"] <= 1.5 * r[k]["eager"] for k in ("prefill_rel_err", "decode_rel_err"))
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--pytest-log", default=None)
    ap.add_argument("--models", default="tiny-llama,smollm2-135m,llama-3.1-8b")
    ap.add_argument("--kernel-check", action="store_true", help="check every kernel against its reference")
    a = ap.parse_args()
    device = torch.device("cuda")
    rec = {"kind": "gpu-check", "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "commit": git_commit(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "command": " ".join(sys.argv), "models": {}}
    if a.pytest_log and Path(a.pytest_log).exists():
        rec["tests"] = pytest_counts(Path(a.pytest_log).read_text().strip())
    for name in a.models.split(","):
        try:
            rec["models"][name] = check_random(name, device, kernels=a.kernel_check)
        except Exception as e:  # record and go on: one failing model must not hide the others
            rec["models"][name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(rec["models"][name])[:3000], flush=True)
        torch.cuda.empty_cache()
    if a.gguf:
        try:
            rec["models"]["SmolLM2-135M-Instruct (real weights)"] = check_smollm2(a.gguf, device)
        except Exception as e:
            rec["models"]["SmolLM2-135M-Instruct (real weights)"] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(rec["models"]["SmolLM2-135M-Instruct (real weights)"])[:600], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rec, indent=1, default=str))


if __name__ == "__main__":
    main()

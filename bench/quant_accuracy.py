"""Which weights tolerate int8? Prefill logits error against fp32 when chosen groups of weights are stored as
int8 (one scale per ds4c.precision.QUANT_GROUP weights, the quantiser of runtime/weights.py) and the model
otherwise runs eager in bf16: the quantised weights are dequantised to bf16, so the figure isolates what the
storage type costs (ds4c's kernels read the int8 values and scales directly and accumulate in fp32).

    python bench/quant_accuracy.py --config llama-3.2-1b --prompt-len 256 --out bench/results/x.json

Groups: ffn (gate, up, down), attn (q, k, v, o), lm_head (the output projection; a tied embedding is
quantised only for the head, the token lookup keeps bf16). Errors are relative (ds4c.precision.rel_error)
and are also given as a multiple of eager bf16's, the bound the benchmark checks (1.5x).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import platform

import torch

from ds4c.benchmark.record import git_commit
from ds4c.benchmark.runner import BenchSpec, fp32_reference, make_inputs, make_model
from ds4c.precision import dequantize, rel_error
from ds4c.runtime.weights import quantize

GROUPS = {"ffn": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
          "attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")}
VARIANTS = ("ffn", "ffn+lm_head", "ffn+attn", "ffn+attn+lm_head")


def _fake_quant(w: torch.Tensor) -> torch.Tensor:
    values, scale = quantize(w, "int8")
    return dequantize(values, scale).to(w.dtype)


def quantised_copy(model, groups: set[str]):
    """A copy of the bf16 model whose weights in `groups` went through int8 and back."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer in m.model.layers:
            for g in groups & GROUPS.keys():
                for path in GROUPS[g]:
                    lin = layer.get_submodule(path)
                    lin.weight.copy_(_fake_quant(lin.weight))
        if "lm_head" in groups:
            head = m.model.embed_tokens.weight if m.config.tie_word_embeddings else m.lm_head.weight
            # a tied head gets its own int8 copy (untied here); the token lookup keeps bf16
            m.config = dataclasses.replace(m.config, tie_word_embeddings=False)
            m.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False, dtype=head.dtype,
                                        device=head.device)
            m.lm_head.weight.copy_(_fake_quant(head))
    return m


def prefill_logits(m, inputs) -> torch.Tensor:
    with torch.no_grad():
        return m.prefill(inputs.tokens, inputs.last).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="llama-3.2-1b")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--seeds", default="0", help="comma-separated weight/prompt seeds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device(args.device)
    rows = []
    for seed in map(int, args.seeds.split(",")):
        spec = BenchSpec(config=args.config, prompt_len=args.prompt_len, decode_len=1, seed=seed)
        cfg, model = make_model(spec, dev)
        inputs = make_inputs(cfg.vocab_size, args.prompt_len, 1, seed, dev)
        ref = fp32_reference(model, inputs)
        eager = rel_error(prefill_logits(model, inputs), ref)
        row = {"seed": seed, "eager_bf16": eager}
        for v in VARIANTS:
            m = quantised_copy(model, set(v.split("+")))
            err = rel_error(prefill_logits(m, inputs), ref)
            row[v] = {"rel_err": err, "vs_eager": err / eager}
            print(f"seed {seed} {v:18s} {err:.3e} ({err / eager:.2f}x eager {eager:.3e})", flush=True)
            del m
        rows.append(row)
    rec = {"kind": "quant_accuracy", "date": datetime.date.today().isoformat(), "commit": git_commit(),
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "config": args.config, "prompt_len": args.prompt_len,
           "quant": "int8, one float32 scale per 64 weights", "rows": rows,
           "command": "python bench/quant_accuracy.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()

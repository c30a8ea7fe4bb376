"""Diagnose a plan kernel that disagrees with its reference on the GPU: run a random-weight model's prefill
step by step, list every kernel's error, then re-run the worst kernel in isolation (same inputs, fresh
output; contiguous copies; fresh random inputs) and run the whole prefill twice to look for races."""

import sys

import torch

from ds4c import kernel_templates
from ds4c.check import check_graph
from ds4c.compiler import Options
from ds4c.device import current_gpu
from ds4c.llm import compile_llm
from ds4c.models.configs import BUILTIN
from ds4c.models.llama import Llama
from ds4c.precision import rel_error
from ds4c.runtime.loader import load_source

sys.path.insert(0, "bench")
from gpu_check import init_on_device  # noqa: E402

dev = torch.device("cuda")
name = sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"
T = int(sys.argv[2]) if len(sys.argv) > 2 else 64
m = Llama(BUILTIN[name], max_seq_len=512, dtype=torch.bfloat16, device=dev)
init_on_device(m, 0)
c = compile_llm(m, prefill_len=T, options=Options(use_db=False))
toks = torch.randint(0, m.config.vocab_size, (1, T), device=dev)
last = torch.tensor([T - 1], device=dev)
exe = c.runner._prefill
saved = {}


def keep(i, step, env):
    if step.kind == "kernel":
        saved[i] = ([env[a["t"]].clone() for a in step.args], env[step.outputs[0]].clone())


res = check_graph(exe, c.plan.kernels, toks, last)
c.runner.reset()
exe(toks, last, after_step=keep)
for r in res:
    k = c.plan.kernels[r.kernel]
    print(f"{r.step:4d} {r.template:16s} {r.rel_error:.2e} {'OK ' if r.ok else 'BAD'} {k.problem} {k.config}")
bad = [r for r in res if not r.ok]
c.runner.reset()
a = c.runner.prefill(toks, last).clone()
c.runner.reset()
b = c.runner.prefill(toks, last).clone()
print("prefill twice: max diff", (a.float() - b.float()).abs().max().item())
for r in bad[:3]:
    k = c.plan.kernels[r.kernel]
    t = kernel_templates.get(k.template)
    mod = load_source(c.sources[r.kernel])
    ins, out_seen = saved[r.step]
    step = c.plan.graphs["prefill"].steps[r.step]
    ref = t.reference(k.problem, ins)[0]
    print("step", r.step, "input strides", [tuple(x.stride()) for x in ins], "shapes", [tuple(x.shape) for x in ins],
          "max|in|", [x.float().abs().max().item() for x in ins])
    for label, inputs in (("same inputs", ins), ("contiguous copies", [x.contiguous().clone() for x in ins])):
        out = torch.full_like(out_seen, float("nan"))
        mod.launch(out, *inputs, **step.kwargs, **k.config)
        print("  ", label, rel_error(out, ref), "vs seen", rel_error(out_seen, ref))
    g = torch.Generator().manual_seed(5)
    outs, fresh = t.make_inputs(k.problem, dev, g)
    mod.launch(*outs, *fresh, **t.launch_kwargs(k.problem), **k.config)
    print("   fresh random inputs", rel_error(outs[0], t.reference(k.problem, fresh)[0]))
    dflt = t.default(k.problem, current_gpu())
    out = torch.full_like(out_seen, float("nan"))
    for cfg in ({**dflt, "num_stages": 1}, {**dflt, "num_warps": 8}, {**dflt, "BLOCK_N": 64}):
        if t.valid(cfg, k.problem, current_gpu()):
            out = torch.full_like(out_seen, float("nan"))
            mod.launch(out, *ins, **step.kwargs, **cfg)
            print("   config", cfg, rel_error(out, ref))

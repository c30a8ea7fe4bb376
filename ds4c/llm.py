"""Compile a Llama-family model (ds4c/models/llama.py) into a plan with two graphs, prefill (a fixed prompt
bucket) and one decode step, and run it: the path behind `ds4c compile` / `ds4c run` and the benchmark's
ds4c engine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ds4c.runtime.llm import LLMRunner, load_kernels
from ds4c.runtime.plan import Plan, from_json, to_json
from ds4c.runtime.plan import save as save_plan

from . import compile_cache
from .capture import export_graph
from .compiler import Options, compile_graph, make_chooser, report
from .device import current_gpu
from .ir import Graph
from .lower import KernelTable
from .models.llama import Llama, entry_point, rope_tables

log = logging.getLogger("ds4c")


def example_inputs(model: Llama, prefill_len: int) -> dict[str, tuple]:
    dev = model.rope_cos.device
    return {
        "prefill": (torch.zeros(1, prefill_len, dtype=torch.long, device=dev),
                    torch.tensor([prefill_len - 1], device=dev)),
        "decode": (torch.zeros(1, 1, dtype=torch.long, device=dev), torch.tensor([prefill_len], device=dev)),
    }


def capture_llm(model: Llama, prefill_len: int) -> dict[str, Graph]:
    """The prefill and decode graphs of model as IR."""
    if not 1 <= prefill_len < model.max_seq_len:
        raise ValueError(f"prefill length {prefill_len} must be in 1..{model.max_seq_len - 1}")
    graphs = {}
    for name, args in example_inputs(model, prefill_len).items():
        graphs[name] = export_graph(entry_point(model, name), args).graph
    return graphs


@dataclass
class CompiledLLM:
    plan: Plan
    sources: dict[str, str]
    saved_state: dict[str, torch.Tensor]  # constant buffers (rope tables) the plan keeps
    report: dict
    compile_s: float
    runner: LLMRunner | None = None

    def bind(self, weights: dict[str, torch.Tensor], device: torch.device, cuda_graph: bool = True,
             state: dict[str, torch.Tensor] | None = None, pdl: bool | None = None) -> LLMRunner:
        kernels = load_kernels(self.plan, sources=self.sources)
        self.runner = LLMRunner(self.plan, kernels, weights, self.saved_state, device, cuda_graph, state, pdl)
        return self.runner

    def prefill(self, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return self.runner.prefill(tokens, last)

    def decode(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.runner.decode(token, pos)

    def save(self, out_dir: str | Path) -> Path:
        return save_plan(self.plan, self.sources, out_dir, self.saved_state)


def _state(model: Llama, graphs: dict[str, Graph]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Plan state: mutated buffers start as zeros; constant buffers are saved with the plan."""
    mutated = {s for g in graphs.values() for s in g.graph["mutations"]}
    buffers = dict(model.named_buffers())
    spec, saved = {}, {}
    for g in graphs.values():
        for n in g.graph["inputs"]:
            role = g.graph["roles"][n]
            if not role.startswith("buffer:") or role in spec:
                continue
            t = buffers[role.removeprefix("buffer:")]
            if t.is_meta and role in ("buffer:rope_cos", "buffer:rope_sin"):  # a model built on "meta"
                t = rope_tables(model.config, model.max_seq_len)[role == "buffer:rope_sin"]
            spec[role] = {"init": "zeros" if role in mutated else "file", "shape": list(t.shape),
                          "dtype": str(t.dtype).removeprefix("torch.")}
            if role not in mutated:
                saved[role] = t.detach().cpu()
    return spec, saved


def compile_llm(model: Llama, *, prefill_len: int, options: Options | None = None,
                bind: bool = True, cuda_graph: bool = True, meta: dict | None = None,
                pdl: bool | None = None) -> CompiledLLM:
    """Capture, optimise and lower both graphs; with bind, ready to run on the model's own weights.
    pdl: decode with programmatic dependent launches (see runtime.llm.LLMRunner; None: $DS4C_PDL)."""
    options = options or Options()
    t0 = time.perf_counter()
    choose = make_chooser(options, current_gpu())
    key = compile_cache.plan_key(model.config.to_hf(), prefill_len, model.max_seq_len,
                                 str(model.model.embed_tokens.weight.dtype).removeprefix("torch."), options.precision)
    hit = compile_cache.lookup(key, choose) if options.use_cache else None
    if hit is not None:
        plan, sources, saved = hit
        plan = dataclasses.replace(plan, meta={**plan.meta, **(meta or {})})
        rep = dict(plan.meta.get("report", {}))
        rep["configs"] = dict(Counter(k.config_source for k in plan.kernels.values()))
        compiled = CompiledLLM(plan, sources, saved, rep, time.perf_counter() - t0)
        log.info("ds4c: plan from the compile cache (%s) in %.2f s", key, compiled.compile_s)
        return _bind(compiled, model, bind, cuda_graph, pdl)
    graphs = capture_llm(model, prefill_len)
    table = KernelTable({}, {})
    optimized, plans = {}, {}
    for name, g in graphs.items():
        optimized[name], plans[name] = compile_graph(g, table, choose, options)
    derived = {}
    for g in optimized.values():
        derived.update(g.graph.get("derived", {}))
    spec, saved = _state(model, optimized)
    rep = report(optimized, table)
    plan = Plan(plans, table.kernels, derived, spec,
                meta={"prefill_len": prefill_len, "max_seq_len": model.max_seq_len,
                      "config": model.config.to_hf(), "precision": options.precision, "report": rep})
    plan = from_json(json.loads(json.dumps(to_json(plan))))  # run exactly what a saved plan would run
    if options.use_cache:
        compile_cache.store(key, plan, table.sources, saved)
    plan = dataclasses.replace(plan, meta={**plan.meta, **(meta or {})})
    compiled = CompiledLLM(plan, table.sources, saved, rep, time.perf_counter() - t0)
    return _bind(compiled, model, bind, cuda_graph, pdl)


def _bind(compiled: CompiledLLM, model: Llama, bind: bool, cuda_graph: bool, pdl: bool | None) -> CompiledLLM:
    """Run on the model's own tensors: its parameters, and its KV cache as the plan's state. Parameters the
    plan concatenates (QKV) become views into the concatenation, in the model too, so the weights are held
    once; their values do not change."""
    if not bind:
        return compiled
    params = dict(model.named_parameters())
    weights = {k: p.detach() for k, p in params.items()}
    state = {f"buffer:{k}": b for k, b in model.named_buffers()}
    runner = compiled.bind(weights, model.rope_cos.device, cuda_graph, state, pdl)
    with torch.no_grad():
        for k, t in runner.weights.items():
            if t.data_ptr() != params[k].data_ptr():
                params[k].data = t
    return compiled


def kernel_problems(model: Llama, prefill_len: int, precision: str = "bf16") -> list[tuple[str, dict]]:
    """Every distinct (template, problem) the compiled model launches: what `ds4c tune` tunes."""
    from .compiler import optimize
    from .ir import op_of, ordered

    seen: dict[str, tuple[str, dict]] = {}
    for g in capture_llm(model, prefill_len).values():
        opt = optimize(g, Options(precision=precision))
        for n in ordered(opt):
            op = op_of(opt, n)
            if op.is_kernel:
                seen.setdefault(json.dumps([op.template, op.problem], sort_keys=True), (op.template, op.problem))
    return list(seen.values())

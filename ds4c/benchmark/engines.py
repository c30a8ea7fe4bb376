"""Engine adapters: each turns the one model object into a (prefill, decode) pair with the model's API.

    prefill(tokens int64 [1, T], last int64 [1]) -> logits [1, vocab]
    decode(token int64 [1, 1], pos int64 [1]) -> logits [1, vocab]      (static KV cache, in place)

Engines: "eager" (the model's own methods), "inductor" (torch.compile default for prefill,
mode="reduce-overhead" for decode), "inductor-max-autotune" (mode="max-autotune" for both; CUDA graphs)
and "ds4c" (ds4c.llm.compile_llm; prefill and decode each one CUDA graph replay). "ds4c-pdl" (programmatic
dependent launches) and "ds4c-mixed" (int8 FFN and head weights) run only when named. Outputs may live in a CUDA
graph's memory pool: a caller that keeps logits past the next call must clone them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class EngineUnavailable(RuntimeError):
    """The engine cannot be built here (missing module, unsupported device): recorded as a note."""


@dataclass(frozen=True)
class BuildOptions:
    tune_trials: int | None = None  # ds4c: Optuna trials per kernel (None: compile_llm's default)
    db: str | None = None  # ds4c: tuning DB path or URL (None: compile_llm's default)


@dataclass(frozen=True)
class Engine:
    name: str
    prefill: Callable
    decode: Callable
    modes: dict = field(default_factory=dict)  # what each phase runs as, for the record
    handle: object = None  # keeps compiled objects alive while the engine is
    describe: Callable[[], dict] | None = None  # modes as they turned out after the run (replaces `modes`)
    reads: Callable[[], list[torch.Tensor]] | None = None  # the model tensors it reads (None: all of them)

    def modes_now(self) -> dict:
        return dict(self.describe() if self.describe is not None else self.modes)


def _eager(model, prompt_len: int, opts: BuildOptions) -> Engine:
    return Engine("eager", model.prefill, model.decode, {"prefill": "eager", "decode": "eager"})


def _compile(fn: Callable, mode: str | None) -> Callable:
    """torch.compile(fn) with static shapes; marks a new cudagraph-trees step before each call."""
    compiled = torch.compile(fn, mode=mode, dynamic=False)

    def call(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return call


def _inductor(model, prompt_len: int, opts: BuildOptions) -> Engine:
    return Engine("inductor", _compile(model.prefill, None), _compile(model.decode, "reduce-overhead"),
                  {"prefill": "torch.compile default", "decode": "torch.compile mode=reduce-overhead"})


def _max_autotune(model, prompt_len: int, opts: BuildOptions) -> Engine:
    return Engine("inductor-max-autotune", _compile(model.prefill, "max-autotune"),
                  _compile(model.decode, "max-autotune"),
                  {"prefill": "torch.compile mode=max-autotune", "decode": "torch.compile mode=max-autotune"})


def _ds4c(model, prompt_len: int, opts: BuildOptions, pdl: bool = False, precision: str = "bf16",
          name: str = "ds4c") -> Engine:
    try:
        from ds4c.compiler import Options
        from ds4c.llm import compile_llm
    except Exception as e:  # a broken import: the run goes on without it
        raise EngineUnavailable(f"ds4c engine unavailable: {type(e).__name__}: {e}") from e
    options = Options(precision=precision, db_url=opts.db, tune_trials=opts.tune_trials or 0)
    compiled = compile_llm(model, prefill_len=prompt_len, options=options, pdl=pdl)
    runner = compiled.runner
    extra = f", precision {precision}" if precision != "bf16" else ""

    def describe() -> dict:
        pdl_note = ", programmatic dependent launches" if runner.pdl else ""
        return {"prefill": f"ds4c plan, {runner.runs_as('prefill')}{extra}",
                "decode": f"ds4c plan, {runner.runs_as('decode')}{extra}{pdl_note}"}

    return Engine(name, compiled.prefill, compiled.decode, describe(), handle=compiled, describe=describe,
                  reads=lambda: list(runner.weights.values()))


def _ds4c_pdl(model, prompt_len: int, opts: BuildOptions) -> Engine:
    return _ds4c(model, prompt_len, opts, pdl=True, name="ds4c-pdl")


def _ds4c_mixed(model, prompt_len: int, opts: BuildOptions) -> Engine:
    return _ds4c(model, prompt_len, opts, precision="mixed", name="ds4c-mixed")


BUILDERS: dict[str, Callable[..., Engine]] = {
    "eager": _eager,
    "inductor": _inductor,
    "inductor-max-autotune": _max_autotune,
    "ds4c": _ds4c,
    "ds4c-pdl": _ds4c_pdl,  # experimental, only when asked for: decode with programmatic dependent launches
    "ds4c-mixed": _ds4c_mixed,  # only when asked for: FFN and head weights in int8 (precision mode "mixed")
}
ENGINE_NAMES: tuple[str, ...] = ("eager", "inductor", "inductor-max-autotune", "ds4c")  # the default run
INDUCTOR_ENGINES: tuple[str, ...] = ("inductor", "inductor-max-autotune")


def check_engine_names(names) -> None:
    """Raise ValueError naming the engines of names that do not exist, and the ones that do."""
    bad = [n for n in names if n not in BUILDERS]
    if bad:
        raise ValueError(f"unknown engine(s) {', '.join(bad)}; choose from {', '.join(BUILDERS)}")


def build(name: str, model, prompt_len: int, opts: BuildOptions) -> Engine:
    """Build engine `name` over model (raises EngineUnavailable, or whatever compilation raises)."""
    check_engine_names([name])
    return BUILDERS[name](model, prompt_len, opts)

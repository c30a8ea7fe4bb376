"""The benchmark loop: build one model, measure the ceilings and the fp32 reference, then run each engine
in turn over the same weights (KV cache reset, memory freed between engines) and assemble the record.

One engine failing (an exception, an OOM) is recorded with its error; the run goes on with the next.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from ds4c.benchmark import measure, roofline
from ds4c.benchmark.engines import ENGINE_NAMES, BuildOptions, Engine, EngineUnavailable, build, check_engine_names
from ds4c.benchmark.record import EngineResult, Workload, make_record
from ds4c.precision import rel_error

COLD_DECODE_CALLS = 3  # cudagraph trees: warm-up run, recording run, first replay


@dataclass(frozen=True)
class BenchSpec:
    config: str | None = "llama-3.1-8b"  # built-in name (ignored when checkpoint is given)
    checkpoint: str | None = None
    prompt_len: int = 2048
    decode_len: int = 128
    max_seq_len: int | None = None  # None: next power of two >= prompt_len + decode_len
    engines: tuple[str, ...] = ENGINE_NAMES
    warmup: int = 2
    repeats: int = 5  # timed decode loops (and prefills, unless prefill_repeats says otherwise)
    prefill_repeats: int | None = None  # timed prefills; None: repeats
    seed: int = 0
    launch_steps: int = 8  # decode steps profiled for launches_per_step
    warm_compile: bool = True  # build each engine twice, timing the second (cache-hitting) build too
    build: BuildOptions = field(default_factory=BuildOptions)
    ceiling_sizes: tuple[int | None, int | None] = (None, None)  # (copy bytes, matmul n); None: by device
    cool_to_c: float | None = None  # before each timed phase, idle until the GPU is this cool (None: no wait)

    @property
    def prefill_timings(self) -> int:
        return self.prefill_repeats or self.repeats


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def make_model(spec: BenchSpec, device: torch.device):
    """(config, model): random weights (std 0.02) for a built-in, or a checkpoint's; bf16 on device."""
    from ds4c.models.llama import Llama, init_random

    max_len = spec.max_seq_len or _next_pow2(spec.prompt_len + spec.decode_len)
    if spec.checkpoint:
        from ds4c.checkpoint import load_config, load_weights

        cfg = load_config(spec.checkpoint)
        model = Llama(cfg, max_seq_len=max_len, dtype=torch.bfloat16, device=device)
        model.load_state_dict(load_weights(spec.checkpoint, dtype=torch.bfloat16, device=device))
    else:
        from ds4c.models.configs import BUILTIN

        if spec.config not in BUILTIN:
            raise ValueError(f"unknown config {spec.config!r}; built-ins: {', '.join(BUILTIN)}")
        cfg = BUILTIN[spec.config]
        model = Llama(cfg, max_seq_len=max_len, dtype=torch.bfloat16, device=device)
        init_random(model, spec.seed, std=0.02)
    return cfg, model.eval()


@dataclass(frozen=True)
class Inputs:
    tokens: torch.Tensor  # [1, T]
    last: torch.Tensor  # [1]
    positions: tuple[torch.Tensor, ...]  # decode positions, each [1]


def make_inputs(vocab: int, prompt_len: int, decode_len: int, seed: int, device: torch.device) -> Inputs:
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, vocab, (1, prompt_len), generator=g).to(device)
    last = torch.tensor([prompt_len - 1], device=device)
    positions = tuple(torch.tensor([prompt_len + i], device=device) for i in range(decode_len))
    return Inputs(tokens, last, positions)


def fp32_reference(model, inputs: Inputs) -> torch.Tensor:
    """Prefill logits of an fp32 copy of the model (same weights upcast), TF32 off."""
    ref = copy.deepcopy(model).to(torch.float32)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = ref.prefill(inputs.tokens, inputs.last).float().clone()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        del ref
    return out


def decode_loop(eng: Engine, first: torch.Tensor, inputs: Inputs, stamps: measure.Stamps | None = None,
                tokens: list | None = None) -> None:
    """Greedy decode over inputs.positions from token `first` [1,1]; a stamp after each step."""
    tok = first
    for pos in inputs.positions:
        tok = eng.decode(tok, pos).argmax(-1, keepdim=True)
        if stamps is not None:
            stamps.mark()
        if tokens is not None:
            tokens.append(tok)


def _first_calls(eng: Engine, inputs: Inputs, device: torch.device) -> float:
    """Seconds of the first prefill and COLD_DECODE_CALLS decode steps (compilation included)."""
    t0 = time.perf_counter()
    tok = eng.prefill(inputs.tokens, inputs.last).argmax(-1, keepdim=True)
    for pos in inputs.positions[:COLD_DECODE_CALLS]:
        tok = eng.decode(tok, pos).argmax(-1, keepdim=True)
    measure.sync(device)
    return time.perf_counter() - t0


def _build_timed(name, model, spec, inputs, device) -> tuple[Engine, float]:
    from ds4c.models.llama import reset_cache

    reset_cache(model)
    t0 = time.perf_counter()
    eng = build(name, model, spec.prompt_len, spec.build)
    build_s = time.perf_counter() - t0
    return eng, build_s + _first_calls(eng, inputs, device)


@dataclass
class Measured:
    result: EngineResult
    logits: torch.Tensor | None = None
    greedy: list[int] | None = None


def bench_engine(name: str, model, spec: BenchSpec, inputs: Inputs, device: torch.device,
                 floors: dict, phase: Callable[[str], None]) -> Measured:
    """All figures of one engine; raises whatever building or running it raises."""
    notes: list[str] = []
    phase("compile (cold)")
    eng, cold = _build_timed(name, model, spec, inputs, device)
    warm = None
    if spec.warm_compile:
        del eng
        measure.free_memory(device)
        phase("compile (warm)")
        eng, warm = _build_timed(name, model, spec, inputs, device)
    phase("warm-up")
    with torch.no_grad():
        for _ in range(spec.warmup):
            first = eng.prefill(inputs.tokens, inputs.last).argmax(-1, keepdim=True)
            decode_loop(eng, first, inputs)
        measure.sync(device)
        measure.reset_peak(device)

        meter, note = measure.EnergyMeter.open(device)
        if note:
            notes.append(note)

        _cool(meter, spec, notes, "prefill", phase)
        phase("prefill")
        with measure.ClockSampler(meter) as prefill_clock:
            e0 = measure.energy_start(meter)
            ttft_ms, logits = measure.timed_calls(partial(eng.prefill, inputs.tokens, inputs.last),
                                                  spec.prefill_timings, device)
            prefill_j, prefill_watts = measure.energy_since(meter, e0, device, spec.prefill_timings)
        ttft = measure.Stats.of(ttft_ms)
        logits = logits.float().clone()
        first = logits.argmax(-1, keepdim=True)

        measure.sync(device)
        _cool(meter, spec, notes, "decode", phase)
        phase("decode")
        step_ms, loop_ms = [], []
        with measure.ClockSampler(meter) as decode_clock:
            e0 = measure.energy_start(meter)
            for _ in range(spec.repeats):
                st = measure.Stamps(device)
                st.mark()
                decode_loop(eng, first, inputs, stamps=st)
                step_ms += st.elapsed_ms()
                loop_ms.append(st.total_ms())
            j_per_token, watts = measure.energy_since(meter, e0, device, spec.repeats * spec.decode_len)
        peak = measure.peak_gib(device)
        unread = measure.unread_gib(model, eng.reads()) if eng.reads is not None else None
        step = measure.Stats.of(step_ms)

        greedy = None
        if spec.checkpoint:
            toks: list = []
            decode_loop(eng, first, inputs, tokens=toks)
            greedy = [int(first)] + torch.cat(toks).flatten().tolist()

        phase("launches")
        n = min(spec.launch_steps, spec.decode_len)
        launches, note = measure.launches_per_step(
            lambda i: eng.decode(first, inputs.positions[i]), n, device)
        if note:
            notes.append(note)

    tok_s = 1e3 / step.median
    notes.append(f"compile times: build + first prefill + {COLD_DECODE_CALLS} decode steps; "
                 "decode steps include the greedy argmax")
    res = EngineResult(
        ttft_ms=ttft.median, ttft_ms_p10=ttft.p10, ttft_ms_p90=ttft.p90,
        decode_tok_s=tok_s, decode_tok_s_loop=spec.decode_len * 1e3 / measure.quantile(loop_ms, 0.5),
        decode_ms_p10=step.p10, decode_ms_p90=step.p90, j_per_token=j_per_token, decode_watts=watts,
        decode_sm_mhz=decode_clock.mean_mhz, decode_temp_c=decode_clock.mean_temp_c, prefill_j=prefill_j,
        prefill_watts=prefill_watts, prefill_sm_mhz=prefill_clock.mean_mhz, prefill_temp_c=prefill_clock.mean_temp_c,
        peak_mem_gib=peak, unread_weights_gib=unread,
        peak_mem_gib_own=peak - unread if peak is not None and unread is not None else None,
        launches_per_step=launches, compile_s_cold=cold, compile_s_warm=warm,
        decode_roofline_share=tok_s / floors["decode_tok_s"] if floors["decode_tok_s"] else None,
        prefill_roofline_share=floors["prefill_ms"] / ttft.median if ttft.median > 0 else None,
        modes=eng.modes_now(), notes=notes)
    return Measured(res, logits, greedy)


def _cool(meter, spec: BenchSpec, notes: list[str], what: str, phase: Callable[[str], None]) -> None:
    """Wait for the GPU to cool to spec.cool_to_c before a timed phase; a note says how long and how cool."""
    if spec.cool_to_c is None or meter is None:
        return
    phase(f"cooling to {spec.cool_to_c:g} C")
    temp, waited = measure.wait_cool(meter, spec.cool_to_c)
    if temp is None:
        notes.append("no GPU temperature reading: no cooling wait")
    else:
        notes.append(f"before {what}: waited {waited:.1f} s, GPU at {temp:.0f} C (target {spec.cool_to_c:g} C)")


def _failed(err: BaseException) -> EngineResult:
    if isinstance(err, EngineUnavailable):
        return EngineResult(notes=[str(err)], error=None)
    return EngineResult(notes=[], error=f"{type(err).__name__}: {err}"[:2000])


def run_bench(spec: BenchSpec, device: torch.device, command: str = "",
              phase: Callable[[str, str], None] = lambda engine, what: None,
              partial: Callable[[dict], None] = lambda record: None) -> dict:
    """Run the whole benchmark and return the record (a dict; see record.py). After each engine but the
    last, partial gets the record of the engines done so far, so a run cut short still leaves its figures."""
    check_engine_names(spec.engines)
    phase("setup", "model")
    cfg, model = make_model(spec, device)
    shape = roofline.shape_of(cfg)
    inputs = make_inputs(cfg.vocab_size, spec.prompt_len, spec.decode_len, spec.seed, device)
    phase("setup", "ceilings")
    ceil = roofline.measure_ceilings(device, *spec.ceiling_sizes)
    floors = {"decode_tok_s": roofline.decode_floor_tok_s(shape, spec.prompt_len, spec.decode_len,
                                                          ceil.hbm_gb_s),
              "prefill_ms": roofline.prefill_floor_ms(shape, spec.prompt_len, ceil.bf16_tflops),
              "decode_bytes_first_step": roofline.decode_step_bytes(shape, spec.prompt_len + 1),
              "prefill_tflop": roofline.prefill_flops(shape, spec.prompt_len) / 1e12}
    phase("setup", "fp32 reference")
    ref = fp32_reference(model, inputs)
    measure.free_memory(device)

    results: dict[str, EngineResult] = {}
    errs: dict[str, float | None] = {}
    greedy: dict[str, list[int] | None] = {}

    def assemble() -> dict:
        match = None
        if spec.checkpoint and greedy.get("eager") is not None:
            match = {n: (g == greedy["eager"]) if g is not None else None for n, g in greedy.items()}
        workload = Workload(config=spec.checkpoint or spec.config, prompt_len=spec.prompt_len,
                            decode_len=spec.decode_len, max_seq_len=model.max_seq_len,
                            weights="checkpoint" if spec.checkpoint else "random(std=0.02)")
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return make_record(
            workload=workload, gpu=gpu, driver=measure.driver_version(), command=command,
            ceilings={"hbm_gb_s": ceil.hbm_gb_s, "bf16_tflops": ceil.bf16_tflops}, roofline=floors,
            engines=results, logits_err=errs, greedy_equal_eager=match,
            extra={"settings": {"warmup": spec.warmup, "repeats": spec.repeats,
                                "prefill_repeats": spec.prefill_timings, "seed": spec.seed,
                                "launch_steps": spec.launch_steps, "cool_to_c": spec.cool_to_c,
                                "tune_trials": spec.build.tune_trials,
                                "db": spec.build.db}})

    for name in spec.engines:
        try:
            m = bench_engine(name, model, spec, inputs, device, floors, lambda what, n=name: phase(n, what))
            results[name] = m.result
            errs[name] = rel_error(m.logits, ref)
            greedy[name] = m.greedy
        except Exception as e:  # OOM, compile errors: recorded, and the next engine runs
            results[name] = _failed(e)
            errs[name] = None
        measure.free_memory(device)
        phase(name, "done")
        if name != spec.engines[-1]:
            partial(assemble())
    return assemble()

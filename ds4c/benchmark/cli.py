"""`ds4c bench`: the click command that runs the benchmark, shows progress and a summary table, and
writes the record (bench/results/<date>-<config>-<gpu>.json under the current directory, or --out).

The lead wires `bench` into the `ds4c` group: `cli.add_command(bench)`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ds4c.benchmark.engines import BUILDERS, ENGINE_NAMES, BuildOptions, check_engine_names

PHASES = ("compile (cold)", "compile (warm)", "warm-up", "prefill", "decode", "launches", "done")
ROWS = (  # (label, record key in the engine dict, format)
    ("TTFT ms (median)", "ttft_ms", "{:.2f}"),
    ("TTFT ms p10-p90", ("ttft_ms_p10", "ttft_ms_p90"), "{:.2f}-{:.2f}"),
    ("decode tok/s", "decode_tok_s", "{:.1f}"),
    ("decode tok/s (loop)", "decode_tok_s_loop", "{:.1f}"),
    ("J / token", "j_per_token", "{:.2f}"),
    ("decode W", "decode_watts", "{:.0f}"),
    ("prefill W", "prefill_watts", "{:.0f}"),
    ("SM MHz prefill / decode", ("prefill_sm_mhz", "decode_sm_mhz"), "{:.0f} / {:.0f}"),
    ("GPU C prefill / decode", ("prefill_temp_c", "decode_temp_c"), "{:.0f} / {:.0f}"),
    ("peak mem GiB", "peak_mem_gib", "{:.2f}"),
    ("peak GiB, own weights", "peak_mem_gib_own", "{:.2f}"),
    ("launches / step", "launches_per_step", "{:.1f}"),
    ("compile s cold", "compile_s_cold", "{:.3g}"),
    ("compile s warm", "compile_s_warm", "{:.3g}"),
    ("decode / roofline", "decode_roofline_share", "{:.2f}"),
    ("prefill / roofline", "prefill_roofline_share", "{:.2f}"),
)
OPTIONAL_ROWS = ("peak_mem_gib_own",)  # shown only where some engine has the figure


def _cell(e: dict, key, fmt: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    vals = [e.get(k) for k in keys]
    return "-" if any(v is None for v in vals) else fmt.format(*vals)


def summary_table(rec: dict):
    """A rich Table: one column per engine, one row per figure, ratios vs the best inductor mode."""
    from rich.table import Table

    engines = rec["engines"]
    c = rec["ceilings"]
    t = Table(title=f"{rec['workload']['config']} on {rec['gpu']}: prompt {rec['workload']['prompt_len']}, "
                    f"decode {rec['workload']['decode_len']} (copy {c['hbm_gb_s']:.0f} GB/s, "
                    f"bf16 {c['bf16_tflops']:.0f} TFLOP/s)")
    t.add_column("figure")
    for name in engines:
        t.add_column(name, justify="right")
    for label, key, fmt in ROWS:
        if key in OPTIONAL_ROWS and all(e.get(key) is None for e in engines.values()):
            continue
        t.add_row(label, *(_cell(e, key, fmt) for e in engines.values()))
    ratios = rec.get("vs_best_inductor", {})
    for phase in ("prefill", "decode", "energy"):
        t.add_row(f"{phase} vs best inductor",
                  *(_cell(ratios.get(n, {}), phase, "{:.2f}x") for n in engines))
    errs = rec["logits_rel_err_vs_fp32"]
    t.add_row("logits rel err vs fp32", *(_cell(errs, n, "{:.2e}") for n in engines))
    if rec.get("greedy_equal_eager"):
        t.add_row("greedy = eager", *(str(rec["greedy_equal_eager"].get(n, "-")) for n in engines))
    t.caption = (f"roofline: decode {rec['roofline']['decode_tok_s']:.0f} tok/s, "
                 f"prefill {rec['roofline']['prefill_ms']:.2f} ms")
    return t


class _Display:
    """rich progress: one line per engine, advancing through PHASES."""

    def __init__(self, engines, console):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.fields[name]:<22}"),
                                 BarColumn(bar_width=20), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=console)
        self.tasks = {"setup": self.progress.add_task("", total=3, name="setup")}
        for n in engines:
            self.tasks[n] = self.progress.add_task("waiting", total=len(PHASES), name=n, start=False)

    def __call__(self, engine: str, what: str) -> None:
        task = self.tasks[engine]
        if engine != "setup" and not self.progress.tasks[task].started:
            self.progress.start_task(task)
            self.progress.update(self.tasks["setup"], completed=3, description="done")
        if what == "done":
            self.progress.update(task, description=what, completed=len(PHASES))
        else:
            self.progress.update(task, description=what, advance=1)


PREFILL_REPEATS_GPU = 20


@click.command("bench")
@click.option("--config", "config", default="llama-3.1-8b", show_default=True,
              help="Built-in model config (random weights, std 0.02, bf16).")
@click.option("--checkpoint", type=click.Path(exists=True), help="Hugging Face checkpoint folder instead.")
@click.option("--prompt-len", default=2048, show_default=True, type=click.IntRange(1))
@click.option("--decode-len", default=128, show_default=True, type=click.IntRange(1))
@click.option("--max-seq-len", type=click.IntRange(2), help="KV cache length (default: next power of 2).")
@click.option("--engines", default=None,
              help=f"Comma-separated subset of {','.join(BUILDERS)} (default: {','.join(ENGINE_NAMES)}; eager "
                   "only on a CPU).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1), help="Timed decode loops.")
@click.option("--prefill-repeats", type=click.IntRange(1),
              help="Timed prefills (default: 20 on a GPU, where one takes milliseconds and their spread is wide; "
                   "else --repeats).")
@click.option("--seed", default=0, show_default=True)
@click.option("--tune-trials", type=click.IntRange(0), help="ds4c engine: tuning trials per kernel.")
@click.option("--db", help="ds4c engine: tuning DB (SQLite path or PostgreSQL URL).")
@click.option("--no-warm-compile", is_flag=True, help="Build each engine once (no compile_s_warm).")
@click.option("--cool-to", type=float,
              help="Before each engine's timed prefills and decode loops, idle until the GPU is at most this many "
                   "degrees C (at most 2 minutes; NVML): engines then start from the same thermal state, not "
                   "from the heat of the one before.")
@click.option("--out", type=click.Path(dir_okay=False), help="Record path (default: bench/results/...).")
@click.option("--results-dir", default="bench/results", show_default=True, type=click.Path(file_okay=False))
@click.option("--plot", is_flag=True, help="Also write a bar chart (PNG) next to the record (matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress display or table.")
def bench(config, checkpoint, prompt_len, decode_len, max_seq_len, engines, warmup, repeats, prefill_repeats,
          seed, tune_trials, db, no_warm_compile, cool_to, out, results_dir, plot, quiet):
    """Benchmark one Llama workload under several engines side by side and write a JSON record."""
    from rich.console import Console

    from ds4c.benchmark.record import default_path, write_record
    from ds4c.benchmark.runner import BenchSpec, run_bench
    from ds4c.device import default_device

    device = default_device()
    if engines is None:
        names = ENGINE_NAMES if device.type == "cuda" else ("eager",)
    else:
        names = tuple(n.strip() for n in engines.split(",") if n.strip())
        try:
            check_engine_names(names)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--engines") from None
    spec = BenchSpec(config=config, checkpoint=checkpoint, prompt_len=prompt_len, decode_len=decode_len,
                     max_seq_len=max_seq_len, engines=names, warmup=warmup, repeats=repeats,
                     prefill_repeats=prefill_repeats or (PREFILL_REPEATS_GPU if device.type == "cuda" else None),
                     seed=seed, warm_compile=not no_warm_compile, cool_to_c=cool_to,
                     build=BuildOptions(tune_trials=tune_trials, db=db))
    console = Console(stderr=True, quiet=quiet)
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    display = _Display(names, console)
    target = Path(out) if out else None

    def save(rec: dict) -> Path:  # the same file, rewritten after each engine and at the end
        nonlocal target
        target = target or default_path(rec, Path(results_dir))
        return write_record(rec, target)

    with display.progress:
        rec = run_bench(spec, device, command=command, phase=display, partial=save)
    path = save(rec)
    console.print(summary_table(rec))
    for name, e in rec["engines"].items():
        for line in ([e["error"]] if e["error"] else []) + [n for n in e["notes"] if "unavailable" in n]:
            console.print(f"[yellow]{name}[/]: {line}")
    if plot:
        from ds4c.benchmark.plot import plot_record

        console.print(f"plot: {plot_record(rec, path.with_suffix('.png'))}")
    click.echo(str(path))

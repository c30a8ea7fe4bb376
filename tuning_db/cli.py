"""Command-line face of the tuning database: a `tune` command factory and the `db` group.

Sits at the top of tuning_db; ds4c's CLI mounts both (`main.add_command(db_group)`,
`main.add_command(tune_command(problems_from))`). Errors a user can act on print as one line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import click

from ds4c import kernel_templates
from ds4c.errors import Ds4cError
from ds4c.kernel_templates.base import Template

from .db import TuningDB, read_json, source_current
from .portable import export_entries, import_entries, merge
from .tuner import SAMPLERS, TuneSettings
from .workers import Progress, tune_problems


def open_db(url: str | None, fallback: bool) -> TuningDB:
    try:
        return TuningDB(url, fallback=fallback)
    except Ds4cError as e:
        raise click.ClickException(str(e)) from None


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ds4c.tuning_db").setLevel(logging.WARNING)


_DB_HELP = "SQLAlchemy URL of the tuning database (default: $DS4C_DB, else ~/.cache/ds4c/tuning.db)"
_FALLBACK_HELP = "use the local SQLite file when --db cannot be reached"


def tune_command(problems_from: Callable[[str, int, int, str], list[tuple[str, dict]]], name: str = "tune",
                 precisions: tuple[str, ...] = ("bf16",)) -> click.Command:
    """`tune MODEL`: tune every kernel problem problems_from(MODEL, max_tokens, max_seq_len, precision) lists;
    precisions are the modes --precision offers, the first the default."""

    @click.command(name=name)
    @click.argument("model")
    @click.option("--max-tokens", default=2048, show_default=True, help="largest token count to tune for")
    @click.option("--max-seq-len", default=4096, show_default=True,
                  help="KV cache length (as `ds4c compile --max-seq-len`: decode attention depends on it)")
    @click.option("--precision", type=click.Choice(precisions), default=precisions[0], show_default=True,
                  help="precision mode to tune the kernels of (as `ds4c compile --precision`)")
    @click.option("--db", "url", default=None, help=_DB_HELP)
    @click.option("--db-fallback", is_flag=True, help=_FALLBACK_HELP)
    @click.option("--workers", default=1, show_default=True, help="tuning processes sharing the database")
    @click.option("--trials", default=64, show_default=True, help="measured configs per kernel problem")
    @click.option("--seconds", type=float, default=None, help="wall-clock budget per kernel problem")
    @click.option("--patience", type=int, default=None, help="stop a problem after N trials without gain")
    @click.option("--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True)
    @click.option("--seed", default=0, show_default=True)
    @click.option("--only", default="", metavar="TEMPLATES",
                  help="tune only kernels of these templates (comma-separated, e.g. gemv,decode_attention)")
    def tune(model, max_tokens, max_seq_len, precision, url, db_fallback, workers, trials, seconds, patience,
             sampler, seed, only):
        """Tune the kernels of MODEL into the tuning database."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        _quiet_optuna()
        try:
            items = problems_from(model, max_tokens, max_seq_len, precision)
        except Ds4cError as e:
            raise click.ClickException(str(e)) from None
        if only:
            wanted = {t.strip() for t in only.split(",") if t.strip()}
            names = {getattr(t, "name", t) for t, _ in items}  # items hold templates or their names
            if wanted - names:
                raise click.BadParameter(f"{', '.join(sorted(wanted - names))}: no kernel of {model} uses it; "
                                         f"its templates are {', '.join(sorted(names))}", param_hint="--only")
            items = [(t, p) for t, p in items if getattr(t, "name", t) in wanted]
        db = open_db(url, db_fallback)
        settings = TuneSettings(trials=trials, seconds=seconds, patience=patience, sampler=sampler, seed=seed)
        with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 TextColumn("{task.fields[best]}")) as bar:
            task = bar.add_task(f"tuning {len(items)} kernels", total=trials * len(items), best="")

            def show(p: Progress) -> None:
                best = "" if p.best_us is None else f"best {p.label} {p.best_us:.1f} us"
                bar.update(task, completed=p.done, best=best)

            results = tune_problems(items, db, workers=workers, settings=settings, on_progress=show)
        for r in results:
            best = "no valid config" if r.best_us is None else f"{r.best_us:10.1f} us {r.best_config}"
            click.echo(f"{r.key[:12]}  {r.template:16s} {r.measured:4d} trials  {best}")

    return tune


def make_db_group(resolve: Callable[[str], Template] = kernel_templates.get) -> click.Group:
    """The `db` command group; resolve maps template names to templates when importing."""

    @click.group(name="db")
    @click.option("--db", "url", default=None, help=_DB_HELP)
    @click.option("--db-fallback", is_flag=True, help=_FALLBACK_HELP)
    @click.pass_context
    def db(ctx, url, db_fallback):
        """Inspect and maintain the tuning database."""
        _quiet_optuna()
        ctx.obj = lambda: open_db(url, db_fallback)

    @db.command(name="ls")
    @click.pass_obj
    def ls(opener):
        """List tuned kernels: key, template, GPU, best time, trials; "template changed" marks entries measured
        on another text of their template (no lookup reaches them; `prune` drops them)."""
        for e in sorted(opener().entries(), key=lambda e: (e.fields.template, e.key)):
            us = "-" if e.us is None else f"{e.us:.2f}"
            note = "" if source_current(e.fields, resolve) else "  template changed"
            click.echo(f"{e.key[:12]}  {e.fields.template:16s} {e.fields.gpu:20s} {us:>12s} us "
                       f"{e.trials:5d} trials{note}")

    @db.command(name="show")
    @click.argument("key")
    @click.pass_obj
    def show(opener, key):
        """Show one entry (a unique key prefix is enough) as JSON."""
        found = opener().find(key)
        if len(found) != 1:
            raise click.ClickException(f"{len(found)} entries match key prefix {key!r}")
        e = found[0]
        click.echo(json.dumps({**e.to_json(), "trials": e.trials}, indent=2, sort_keys=True))

    @db.command(name="export")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.pass_obj
    def export(opener, file):
        """Write the best config of every entry, with its key fields, as portable JSON."""
        data = export_entries(opener())
        Path(file).write_text(json.dumps(data, indent=1, sort_keys=True))
        click.echo(f"exported {len(data['entries'])} entries to {file}")

    @db.command(name="import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.pass_obj
    def import_(opener, file):
        """Add the entries of an export; every entry is checked, bad ones are rejected."""
        try:
            data = read_json(file)
        except Ds4cError as e:
            raise click.ClickException(str(e)) from None
        ok, bad = import_entries(opener(), data, resolve)
        click.echo(f"imported {ok} entries, rejected {bad}")

    @db.command(name="merge")
    @click.argument("url")
    @click.pass_obj
    def merge_(opener, url):
        """Copy the best entries of another storage (any SQLAlchemy URL) into this one."""
        try:
            ok, bad = merge(opener(), url, resolve)
        except Ds4cError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"merged {ok} entries, rejected {bad}")

    @db.command(name="prune")
    @click.option("--gpu", default=None, help="also drop entries of every GPU but this one (its name)")
    @click.pass_obj
    def prune(opener, gpu):
        """Drop entries from other torch/triton/schema versions, or measured on another text of their template
        (and other GPUs with --gpu)."""
        dropped = opener().prune(keep_gpu=gpu, resolve=resolve)
        click.echo(f"dropped {len(dropped)} entries")

    return db


db_group = make_db_group()

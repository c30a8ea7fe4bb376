"""Tuning many problems with many processes against one storage (Optuna's distributed optimisation).

Sits on top of the tuner. The parent creates the schema and every study before any worker starts (two
processes creating them at once is a known crash); each worker then walks all problems, starting at a
different one, and joins whichever study still has budget left. The same call on another machine with the
same --db cooperates through the storage; a study already tuned to budget is skipped.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ds4c import kernel_templates
from ds4c.device import GpuInfo, current_gpu
from ds4c.kernel_templates.base import Problem, Template

from .db import TuningDB
from .key import key_fields
from .tuner import (
    TuneResult,
    TuneSettings,
    default_compile_workers,
    make_sampler,
    study_state,
    summarize,
    tune,
)

Item = tuple[str | Template, Problem]


@dataclass(frozen=True)
class Progress:
    done: int  # measured trials over all keys, each capped at the per-key budget
    total: int
    best_us: float | None  # best time of the most recently advanced key
    label: str  # its template name


def _resolve(t: str | Template) -> Template:
    return kernel_templates.get(t) if isinstance(t, str) else t


def _worker(url: str, items: list, gpu: GpuInfo, settings: TuneSettings, index: int, out) -> None:
    db = TuningDB(url)
    ran = {}
    order = items[index % len(items):] + items[:index % len(items)]
    for template, problem in order:
        r = tune(_resolve(template), problem, db, gpu, settings, worker=index)
        ran[r.key] = r.ran
    out.put((index, ran))


def _snapshot(db: TuningDB, studies: list, settings: TuneSettings) -> tuple[int, float | None, str]:
    done, best, label, newest = 0, None, "", -1.0
    for name, study in studies:
        st = study_state(study)
        done += min(st.measured, settings.trials)
        last = max((t.datetime_complete.timestamp() for t in study.get_trials(deepcopy=False)
                    if t.datetime_complete is not None), default=-1.0)
        if last > newest and st.best < float("inf"):
            newest, best, label = last, st.best, name
    return done, best, label


def tune_problems(items: Sequence[Item], db: TuningDB, gpu: GpuInfo | None = None, *, workers: int = 1,
                  settings: TuneSettings | None = None,
                  on_progress: Callable[[Progress], None] | None = None) -> list[TuneResult]:
    """Tune every (template or template name, problem) into db with `workers` processes."""
    gpu = gpu or current_gpu()
    settings = settings or TuneSettings()
    if workers > 1 and settings.compile_workers is None:  # the workers share the machine's CPUs
        settings = replace(settings, compile_workers=default_compile_workers(workers))
    items = [(t, dict(p)) for t, p in items]
    templates = [_resolve(t) for t, _ in items]
    studies = []
    for tpl, (_, problem) in zip(templates, items, strict=True):  # schema and studies before any worker
        studies.append((tpl.name, db.study(key_fields(tpl, problem, gpu), gpu,
                                           make_sampler(settings.sampler, tpl, settings.seed))))
    total = settings.trials * len(items)

    def report() -> None:
        if on_progress is not None:
            done, best, label = _snapshot(db, studies, settings)
            on_progress(Progress(done, total, best, label))

    if workers <= 1:
        results = []
        for tpl, (_, problem) in zip(templates, items, strict=True):
            results.append(tune(tpl, problem, db, gpu, settings, on_trial=lambda _r: report()))
        report()
        return results
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db.url, items, gpu, settings, w, queue), daemon=False)
             for w in range(workers)]
    for p in procs:
        p.start()
    ran: dict[str, list[int]] = {}
    got = 0
    while got < workers:
        report()
        try:
            _, part = queue.get(timeout=1.0)
        except Exception:  # queue.Empty: poll progress again, unless every worker is gone
            if not any(p.is_alive() for p in procs) and queue.empty():
                break
            continue
        got += 1
        for key, numbers in part.items():
            ran.setdefault(key, []).extend(numbers)
    for p in procs:
        p.join()
    report()
    final = []
    for tpl, (_, problem) in zip(templates, items, strict=True):
        final.append(summarize(db, tpl, problem, gpu, tuple(sorted(ran.get(
            key_fields(tpl, problem, gpu).key, ())))))
    return final

"""The auto-tuner: Optuna proposes configs from a template's search space, `measure` checks and times them,
the study in the tuning database keeps every trial.

Sits between kernel_templates (spaces, validity, references) and the database. Each parameter is an index
into its candidate list (`suggest_int`), so TPE and CMA-ES see tile sizes as ordered. A proposal the
template's `valid` predicate rejects is told PRUNED at once (nothing compiles; it does not count against
the trial budget); a proposal already measured in the study reuses that result without counting. After a
run of such proposals the tuner queues a random unmeasured valid config, so sparse spaces still make
progress. Budgets (trials, seconds, patience) are read from the study, so every process sharing it stops
together. The template's heuristic default is the first trial of a fresh study and one config of each
other implementation (IMPL != 0) comes next, so a tuned entry is never slower than the default, nor than a
vendor library, by the tuner's own measure, however small the budget. On a GPU a pool of processes
compiles the next batch of proposals while this process times the current one.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import TrialState

from ds4c.device import GpuInfo, default_device
from ds4c.kernel_templates.base import Config, Problem, Template

from .db import TuningDB
from .key import canonical_json, key_fields
from .measure import Measurement, measure, precompile

SAMPLERS = ("tpe", "random", "grid", "exhaustive", "cmaes")
FINISHED = (TrialState.COMPLETE, TrialState.FAIL)


@dataclass(frozen=True)
class TuneSettings:
    trials: int = 64  # measured (compiled and run) configs per key, over all processes
    seconds: float | None = None  # wall-clock budget per key for this process
    patience: int | None = None  # stop when the best has not improved for this many measured trials
    sampler: str = "tpe"
    seed: int = 0
    compile_workers: int | None = None  # per tuning process; None: default_compile_workers()
    stale_after_s: float = 3600.0  # a RUNNING trial older than this is taken as dead
    target_us: float | None = None  # stop once a config at least this fast has been measured


@dataclass(frozen=True)
class TuneResult:
    key: str
    template: str
    problem: dict
    best_config: Config | None
    best_us: float | None
    measured: int  # counted trials of the study (all processes)
    ran: tuple[int, ...]  # trial numbers this process finished
    stop: str  # why tuning stopped: budget, exhausted, patience, target, seconds, attempts, no-valid-config


def valid_configs(template: Template, problem: Problem, gpu: GpuInfo) -> list[Config]:
    return [c for c in template.space.grid() if template.valid(c, problem, gpu)]


def make_sampler(name: str, template: Template, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name in ("grid", "exhaustive"):
        return optuna.samplers.RandomSampler(seed=seed)  # tune() enqueues each valid config in order
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def config_of(trial: optuna.Trial, template: Template) -> Config:
    return {n: v[trial.suggest_int(n, 0, len(v) - 1)] for n, v in template.space.params}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale(study: optuna.Study, stale_after_s: float) -> int:
    """Mark RUNNING trials of dead workers FAIL: same host and a gone pid, or older than stale_after_s."""
    host, now, n = socket.gethostname(), datetime.now(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        dead = (t.user_attrs.get("host") == host and type(pid) is int and pid != os.getpid()
                and not _alive(pid))
        old = t.datetime_start is not None and (now - t.datetime_start).total_seconds() > stale_after_s
        if not (dead or old):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "reason", "worker died mid-trial")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another process got there first
    return n


@dataclass(frozen=True)
class _State:
    measured: int
    distinct: int
    best: float
    since_best: int
    seen: dict  # config json -> (state, value, reason) of counted finished trials


def study_state(study: optuna.Study, complete: Callable[[object], object] = lambda c: c) -> _State:
    """Counted trials so far; complete (a template's space.complete) fills in the parameters a config
    stored before they existed lacks, so that it is seen as the config it was."""
    best, since, seen, n = math.inf, 0, {}, 0
    for t in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number):
        if not t.user_attrs.get("counted"):
            continue
        n += 1
        seen.setdefault(canonical_json(complete(t.user_attrs.get("config"))),
                        (t.state, t.value, t.user_attrs.get("reason")))
        if t.state == TrialState.COMPLETE and t.value < best:
            best, since = t.value, 0
        else:
            since += 1
    return _State(n, len(seen), best, since, seen)


# After this many proposals in a row that the template rejects or that repeat a measured config, the next
# trial is a random valid config nobody has measured: where valid configs are a small part of the space (or
# the sampler has converged) the search still makes progress, and the sampler learns from the result.
WASTED_PROPOSALS = 16
# An exhaustive worker whose remaining configs are all in flight in other workers waits for them: it reads the
# study again after a pause that doubles from the first to the last value. After each pause it fails the
# trials of dead workers (fail_stale), whose configs it then measures itself.
IDLE_WAIT_S = (0.05, 1.0)
_sleep = time.sleep  # patched by tests


def _stop_reason(s: _State, settings: TuneSettings, n_valid: int, t0: float, attempts: int) -> str:
    if s.measured >= settings.trials:
        return "budget"
    if s.distinct >= n_valid:
        return "exhausted"
    if settings.patience is not None and math.isfinite(s.best) and s.since_best >= settings.patience:
        return "patience"
    if settings.target_us is not None and s.best <= settings.target_us:
        return "target"
    if settings.seconds is not None and time.monotonic() - t0 >= settings.seconds:
        return "seconds"
    if attempts > 20 * settings.trials + 100:
        return "attempts"
    return ""


def _unseen(study: optuna.Study, valid: list[Config], state: _State) -> list[Config]:
    """Valid configs nobody has measured, is measuring or has queued."""
    running = {canonical_json(t.user_attrs.get("config"))
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    return [c for c in valid if canonical_json(c) not in state.seen and canonical_json(c) not in running]


def _enqueue(study: optuna.Study, template: Template, config: Config) -> None:
    study.enqueue_trial({n: list(v).index(config[n]) for n, v in template.space.params})


def _enqueue_next(study: optuna.Study, template: Template, valid: list[Config], state: _State) -> bool:
    """The exhaustive search: queue the first valid config nobody has measured or is measuring; False when
    there is none."""
    unseen = _unseen(study, valid, state)
    if unseen:
        _enqueue(study, template, unseen[0])
    return bool(unseen)


def _enqueue_firsts(study: optuna.Study, template: Template, problem: Problem, gpu: GpuInfo,
                    valid: list[Config]) -> None:
    """Queue, in a study with no trial yet, the heuristic default, then one config of each other
    implementation the template offers (IMPL != 0: a vendor library, which a sampler over the tile space
    would rarely propose, or a kernel with a tile space of its own). The template's `alternatives` names
    them; without it, every valid config with IMPL != 0 is one. The sampler proposes the rest."""
    if study.get_trials(deepcopy=False):
        return
    firsts: list[Config] = []
    try:
        c = template.default(problem, gpu)
        if template.space.contains(c) and template.valid(c, problem, gpu):
            firsts.append(c)
    except ValueError:
        pass
    if template.alternatives is None:
        others = [c for c in valid if c.get("IMPL", 0) != 0]
    else:
        others = [c for c in template.alternatives(problem, gpu)
                  if template.space.contains(c) and template.valid(c, problem, gpu)]
    firsts += [c for c in others if c not in firsts]
    for c in firsts:
        _enqueue(study, template, c)


def _propose(study: optuna.Study, template: Template, problem: Problem, gpu: GpuInfo, settings: TuneSettings,
             valid: list[Config], state: _State, in_flight: set[str]):
    """Ask the sampler for one config: (trial, config) to measure, or None when the proposal was told at
    once (PRUNED when invalid or already in flight, a repeat of a measured config's result otherwise)."""
    if settings.sampler in ("grid", "exhaustive") and not _enqueue_next(study, template, valid, state):
        return None  # every valid config is measured or in flight: the grid's own pick could be an invalid one
    trial = study.ask()
    config = config_of(trial, template)
    trial.set_user_attr("config", config)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())
    key = canonical_json(config)
    if not template.valid(config, problem, gpu):
        trial.set_user_attr("reason", "invalid: rejected by the template's valid()")
        study.tell(trial, state=TrialState.PRUNED)
    elif key in state.seen:
        st, value, reason = state.seen[key]
        m = Measurement(st == TrialState.COMPLETE, value if value is not None else math.inf,
                        f"{reason} (a duplicate: not measured again)")
        _tell(study, trial, m, False, duplicate=True)
    elif key in in_flight:
        trial.set_user_attr("reason", "a duplicate of a config being measured")
        study.tell(trial, state=TrialState.PRUNED)
    else:
        return trial, config
    return None


def _room(study: optuna.Study, settings: TuneSettings) -> int:
    """Trials the budget still allows. Counted finished trials and trials in flight anywhere (this process's
    batches, other workers') count against it. Read afresh before each proposal of a batch, so that workers
    proposing batches at once overshoot the budget by at most one trial each."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return settings.trials - sum(1 for t in trials if t.state == TrialState.RUNNING or t.user_attrs.get("counted"))


def default_compile_workers(processes: int = 1) -> int:
    """Compile processes per tuning process: none under the interpreter (kernels build as they launch); on a
    GPU at most 8, the machine's CPUs shared among the `processes` tuning processes running on it."""
    if default_device().type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // max(1, processes)))


def _compile_workers(settings: TuneSettings) -> int:
    return settings.compile_workers if settings.compile_workers is not None else default_compile_workers()


def _tell(study: optuna.Study, trial: optuna.Trial, m: Measurement, counted: bool, **attrs) -> None:
    trial.set_user_attr("counted", counted)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if m.ok:
        study.tell(trial, m.us)
    else:
        trial.set_user_attr("reason", m.reason)
        study.tell(trial, state=TrialState.FAIL)


def tune(template: Template, problem: Problem, db: TuningDB, gpu: GpuInfo,
         settings: TuneSettings = TuneSettings(), *, worker: int = 0,
         on_trial: Callable[[TuneResult], None] | None = None,
         measure_fn: Callable[..., Measurement] | None = None) -> TuneResult:
    """Tune one (template, problem) into db until a budget stops it; other processes may share the study.
    measure_fn (default: measure) checks and times one config; a benchmark may replay a measured table."""
    measure_fn = measure_fn or measure
    fields = key_fields(template, problem, gpu)
    sampler = make_sampler(settings.sampler, template, settings.seed + 1000 * worker)
    study = db.study(fields, gpu, sampler)
    fail_stale(study, settings.stale_after_s)
    valid = valid_configs(template, problem, gpu)
    if settings.sampler not in ("grid", "exhaustive"):
        _enqueue_firsts(study, template, problem, gpu, valid)
    t0, attempts, wasted, ran, stop = time.monotonic(), 0, 0, [], "no-valid-config"
    rng = random.Random(settings.seed + 1000 * worker)
    nproc = _compile_workers(settings)
    pool = ProcessPoolExecutor(nproc, mp_context=_spawn()) if nproc > 0 and valid else None
    # Pipelined: the pool compiles the next batch of proposals while this process times the current one.
    # A batch is proposed before the current one's results are in (at most one batch of lag for the
    # sampler), and never beyond the trial budget; a batch once compiled is always measured and told.
    pending: list = []  # [(trial, config, future or None)] compiled or compiling, not yet measured
    idle_wait = IDLE_WAIT_S[0]
    try:
        while valid:
            state = study_state(study, template.space.complete)
            stop = _stop_reason(state, settings, len(valid), t0, attempts)
            room = _room(study, settings)
            batch = []
            if not stop and room > 0:
                in_flight = {canonical_json(c) for _, c, _ in pending}
                for i in range(max(1, nproc)):
                    if i and _room(study, settings) <= 0:  # read again: other workers propose meanwhile
                        break
                    attempts += 1
                    proposed = _propose(study, template, problem, gpu, settings, valid, state, in_flight)
                    if proposed is not None:
                        wasted = 0
                        batch.append(proposed)
                        in_flight.add(canonical_json(proposed[1]))
                        continue
                    wasted += 1
                    if wasted >= WASTED_PROPOSALS:  # the sampler is stuck: give it a random unseen config
                        wasted = 0
                        unseen = [c for c in _unseen(study, valid, state) if canonical_json(c) not in in_flight]
                        if unseen:
                            _enqueue(study, template, rng.choice(unseen))
                batch = [(t, c, pool.submit(precompile, template, problem, c) if pool else None)
                         for t, c in batch]
            if pool is None:  # nothing compiles in the background: measure this batch now
                pending, batch = batch, []
            if not pending and not batch:
                if stop or room <= 0:
                    break
                if settings.sampler in ("grid", "exhaustive"):  # the rest is in flight elsewhere: wait for it
                    _sleep(idle_wait)
                    fail_stale(study, settings.stale_after_s)  # unless its worker died: then it is ours to do
                    idle_wait = min(2 * idle_wait, IDLE_WAIT_S[1])
                continue  # every proposal was pruned or a duplicate: propose again
            idle_wait = IDLE_WAIT_S[0]
            for trial, config, fut in pending:
                err = fut.result() if fut is not None else ""
                # one input seed per problem: measure() then makes the inputs and reference once for all
                m = Measurement(False, math.inf, err) if err else measure_fn(
                    template, problem, config, gpu, seed=settings.seed)
                _tell(study, trial, m, True)
                ran.append(trial.number)
                if on_trial is not None:
                    on_trial(_result(db, template, problem, gpu, fields.key, state, ran, ""))
            pending = batch
    finally:
        if pool is not None:
            pool.shutdown()
    return _result(db, template, problem, gpu, fields.key, study_state(study, template.space.complete), ran, stop)


def _result(db, template, problem, gpu, key, state: _State, ran, stop) -> TuneResult:
    best = db.best_valid(key, template, problem, gpu)
    return TuneResult(key, template.name, problem, None if best is None else best[0],
                      None if best is None else best[1], state.measured, tuple(ran), stop)


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def summarize(db: TuningDB, template: Template, problem: Problem, gpu: GpuInfo, ran: tuple[int, ...] = (),
              stop: str = "workers-done") -> TuneResult:
    """The TuneResult of a key as the database holds it now."""
    fields = key_fields(template, problem, gpu)
    sid = db._study_id(fields.key)
    if sid is None:
        return TuneResult(fields.key, template.name, problem, None, None, 0, ran, stop)
    study = optuna.load_study(study_name=db.storage.get_study_name_from_id(sid), storage=db.storage)
    return _result(db, template, problem, gpu, fields.key, study_state(study, template.space.complete), list(ran), stop)

"""The tuning-database contract, run against every backend (SQLite file and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import logging
import math

import optuna
import pytest
from optuna.trial import TrialState
from vecadd_template import VECADD, resolve

from ds4c.device import INTERPRETER, default_device
from ds4c.errors import Ds4cError
from ds4c.tuning_db import key as keymod
from ds4c.tuning_db.db import STUDY_PREFIX, TuningDB, default_url
from ds4c.tuning_db.key import KeyFields, key_fields
from ds4c.tuning_db.measure import Measurement
from ds4c.tuning_db.portable import distributions, export_entries, import_entries, params_of
from ds4c.tuning_db.tuner import TuneSettings, study_state, tune, valid_configs
from ds4c.tuning_db.workers import tune_problems

IN_FLIGHT = "a duplicate of a config being measured"
P = {"n": 300, "dtype": "float32"}  # 300 is no multiple of any BLOCK: TAIL=0 leaves elements unwritten


def _finished(db: TuningDB, problem=P):
    return db.trials(key_fields(VECADD, problem, INTERPRETER).key, (TrialState.COMPLETE, TrialState.FAIL))


def test_tune_records_failures_and_best_is_min_over_complete(db_url):
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=10, sampler="random", seed=3))
    assert r.stop == "budget" and r.measured == 10
    trials = _finished(db)
    counted = [t for t in trials if t.user_attrs["counted"]]
    assert len(counted) == 10
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert r.best_us == min(t.value for t in complete)
    assert db.lookup(VECADD, P, INTERPRETER) == r.best_config
    for t in trials:
        cfg = t.user_attrs["config"]
        broken = cfg["BLOCK"] == 48 or cfg["TAIL"] == 0
        assert (t.state == TrialState.FAIL) == broken, (cfg, t.user_attrs.get("reason"))
        if broken:
            # a BLOCK that is no power of 2 fails to build: at launch under the interpreter, in the
            # compile processes on a GPU
            assert t.user_attrs["reason"].startswith(("launch:", "compile:") if cfg["BLOCK"] == 48 else "wrong:")
    assert r.best_config["BLOCK"] != 48 and r.best_config["TAIL"] == 1


def test_the_default_is_the_first_trial_of_a_fresh_study(db_url):
    """However small the budget, the heuristic default is measured, so the tuned entry is never slower."""
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=1, sampler="random", seed=11))
    assert r.measured == 1 and r.best_config == VECADD.default(P, INTERPRETER)
    tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=4, sampler="random", seed=11))  # resumes
    counted = sorted((t for t in _finished(db) if t.user_attrs["counted"]), key=lambda t: t.number)
    assert [t.user_attrs["config"] for t in counted].count(VECADD.default(P, INTERPRETER)) == 1
    assert len(counted) == 4


def test_other_implementations_follow_the_default(db_url):
    """Each IMPL != 0 config (a vendor library: one point of the space) is measured right after the default,
    so the tuner weighs it against the tiles however small the budget."""
    from ds4c.kernel_templates import get

    flash = get("flash_attention")
    # on a GPU the vendor libraries (cuDNN, FlashAttention) take bf16 only; the CPU's math backend any dtype
    dtype = "bfloat16" if default_device().type == "cuda" else "float32"
    problem = {"B": 1, "Hq": 2, "Hkv": 1, "T": 16, "S": 16, "D": 16, "dtype": dtype, "causal": True,
               "scale": 0.25}
    db = TuningDB(db_url)
    r = tune(flash, problem, db, INTERPRETER, TuneSettings(trials=3, sampler="random", seed=5))
    assert r.measured == 3
    trials = db.trials(key_fields(flash, problem, INTERPRETER).key, (TrialState.COMPLETE, TrialState.FAIL))
    configs = [t.user_attrs["config"] for t in sorted(trials, key=lambda t: t.number)]
    assert configs[0] == flash.default(problem, INTERPRETER)
    assert [c["IMPL"] for c in configs] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_one_config_of_each_other_implementation_follows_the_default(db_url):
    """A template whose other implementations have tile spaces of their own (matmul's TMA tiles, IMPL=2)
    names one config of each: the default, the vendor BLAS and the TMA tile come first, not every valid
    IMPL != 0 config."""
    from ds4c.kernel_templates import _mm_common as C
    from ds4c.kernel_templates import get
    from ds4c.kernel_templates import matmul as mm

    matmul = get("matmul")
    problem = C.problem(64, 64, 32, "float32")
    assert sum(c["IMPL"] == 2 for c in valid_configs(matmul, problem, INTERPRETER)) > 10
    db = TuningDB(db_url)
    r = tune(matmul, problem, db, INTERPRETER, TuneSettings(trials=3, sampler="random", seed=5))
    assert r.measured == 3
    trials = db.trials(key_fields(matmul, problem, INTERPRETER).key, (TrialState.COMPLETE, TrialState.FAIL))
    configs = [t.user_attrs["config"] for t in sorted(trials, key=lambda t: t.number)]
    assert configs == [matmul.default(problem, INTERPRETER), mm.BLAS, mm.tma_default(problem, INTERPRETER)]
    assert [c["IMPL"] for c in configs] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_compile_pool_pipeline_keeps_the_budget_and_tells_every_trial(db_url):
    """With compile workers, the next batch compiles while this one is timed: the budget holds exactly,
    failures are still recorded, nothing is left RUNNING and no config is measured twice."""
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=7, sampler="random", seed=2, compile_workers=2))
    assert r.stop == "budget" and r.measured == 7
    key = key_fields(VECADD, P, INTERPRETER).key
    assert not db.trials(key, (TrialState.RUNNING,))
    counted = [t for t in _finished(db) if t.user_attrs["counted"]]
    assert len(counted) == 7 and len({str(t.user_attrs["config"]) for t in counted}) == 7
    assert counted[0].user_attrs["config"] == VECADD.default(P, INTERPRETER)
    for t in counted:
        broken = t.user_attrs["config"]["BLOCK"] == 48 or t.user_attrs["config"]["TAIL"] == 0
        assert (t.state == TrialState.FAIL) == broken
    assert r.best_us == min(t.value for t in counted if t.state == TrialState.COMPLETE)


@pytest.mark.parametrize("compile_workers", [0, 6], ids=["serial", "batches"])
def test_exhaustive_grid_measures_each_valid_config_once_and_never_compiles_invalid(db_url, compile_workers):
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=1000, sampler="grid", compile_workers=compile_workers))
    valid = valid_configs(VECADD, P, INTERPRETER)
    assert r.stop == "exhausted" and r.measured == len(valid) == VECADD.space.size() - 2
    counted = [t.user_attrs["config"] for t in _finished(db) if t.user_attrs["counted"]]
    assert sorted(map(str, counted)) == sorted(map(str, valid))
    key = key_fields(VECADD, P, INTERPRETER).key
    # the grid walks the valid configs only, also in batches (compile processes) as the last ones are in flight
    assert not db.trials(key, (TrialState.PRUNED,))


def _all_in_flight_elsewhere(db: TuningDB):
    """(study, trials): another worker's RUNNING trials, one for each valid config of (VECADD, P)."""
    from ds4c.tuning_db import tuner

    study = db.study(key_fields(VECADD, P, INTERPRETER), INTERPRETER, tuner.make_sampler("grid", VECADD, 0))
    others = []
    for c in valid_configs(VECADD, P, INTERPRETER):
        tuner._enqueue(study, VECADD, c)
        t = study.ask()
        t.set_user_attr("config", c)
        others.append(t)
    return study, others


def test_an_exhaustive_worker_waits_for_configs_in_flight_elsewhere(db_url, monkeypatch):
    """Every valid config is in flight in another worker: the grid worker waits (pauses that double) until
    they finish, then stops as exhausted. (Without the pause it re-read the study in a tight loop until the
    attempts cap stopped it.)"""
    from ds4c.tuning_db import tuner

    db = TuningDB(db_url)
    study, others = _all_in_flight_elsewhere(db)
    waits = []

    def sleep(s):
        waits.append(s)
        if len(waits) == 4:  # the other worker finishes its trials
            for t in others:
                t.set_user_attr("counted", True)
                study.tell(t, 1.0)

    monkeypatch.setattr(tuner, "_sleep", sleep)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=100, sampler="grid", compile_workers=0))
    assert r.stop == "exhausted" and r.ran == ()  # not "attempts": the cap on proposals (2100 here)
    assert waits == [0.05, 0.1, 0.2, 0.4]
    assert len(db.trials(r.key)) == len(others)  # the waiting worker created no trial


def test_a_waiting_exhaustive_worker_takes_over_the_configs_of_a_worker_that_died(db_url, monkeypatch):
    import socket
    import subprocess
    import sys

    from ds4c.tuning_db import tuner

    db = TuningDB(db_url)
    study, others = _all_in_flight_elsewhere(db)
    valid = valid_configs(VECADD, P, INTERPRETER)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    waits = []

    def sleep(s):
        if not waits:  # the other worker, on this host, dies while this one waits
            for t in others:
                t.set_user_attr("host", socket.gethostname())
                t.set_user_attr("pid", gone.pid)
        waits.append(s)

    monkeypatch.setattr(tuner, "_sleep", sleep)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=100, sampler="grid", compile_workers=0))
    assert r.stop == "exhausted" and r.measured == len(valid) and len(r.ran) == len(valid)
    assert waits == [0.05]  # noticed at the next pause
    failed = db.trials(r.key, (TrialState.FAIL,))
    assert sum(t.user_attrs.get("reason") == "worker died mid-trial" for t in failed) == len(valid)


def test_invalid_proposals_are_pruned_without_compiling(db_url, monkeypatch):
    from ds4c.tuning_db import tuner

    seen = []
    real = tuner.measure
    monkeypatch.setattr(tuner, "measure", lambda t, p, c, g, **kw: seen.append(c) or real(t, p, c, g, **kw))
    db = TuningDB(db_url)
    tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=12, sampler="random", seed=5))
    key = key_fields(VECADD, P, INTERPRETER).key
    pruned = db.trials(key, (TrialState.PRUNED,))
    invalid = [t for t in pruned if t.user_attrs["reason"].startswith("invalid")]
    assert invalid and all(not VECADD.valid(t.user_attrs["config"], P, INTERPRETER) for t in invalid)
    # the rest (proposed in batches, where compile processes run) repeat a config being measured
    assert all(t.user_attrs["reason"] == IN_FLIGHT for t in pruned if t not in invalid)
    counted = [t for t in _finished(db) if t.user_attrs["counted"]]
    assert len(counted) == 12 and all(VECADD.valid(t.user_attrs["config"], P, INTERPRETER) for t in counted)
    # measured: the valid configs that built (on a GPU the compile processes tell the ones that do not)
    assert seen and all(VECADD.valid(c, P, INTERPRETER) for c in seen)


def test_a_stuck_sampler_still_measures_every_valid_config(db_url, monkeypatch):
    """A sampler that proposes only an invalid config (as TPE does in spirit where valid configs are sparse)
    gets random unmeasured valid configs queued, instead of running into the attempts cap."""
    from ds4c.tuning_db import tuner

    invalid = {"BLOCK": 16, "TAIL": 1, "num_warps": 4}
    assert not VECADD.valid(invalid, P, INTERPRETER)
    stuck = {n: list(v).index(invalid[n]) for n, v in VECADD.space.params}
    monkeypatch.setattr(tuner, "make_sampler", lambda *a, **k: optuna.samplers.PartialFixedSampler(
        stuck, optuna.samplers.RandomSampler(seed=0)))
    wanted = [c for c in valid_configs(VECADD, P, INTERPRETER) if c["BLOCK"] == 64]
    sparse = dataclasses.replace(VECADD, valid=lambda c, p, g: c in wanted)
    # compile_workers=0: the test's template (a lambda) cannot travel to compile processes (CUDA's default)
    r = tune(sparse, P, TuningDB(db_url), INTERPRETER,
             TuneSettings(trials=50, sampler="tpe", seed=3, compile_workers=0),
             measure_fn=lambda t, p, c, g, **kw: Measurement(True, 1.0 + c["num_warps"] + c["TAIL"]))
    assert r.stop == "exhausted" and r.measured == len(wanted)


def test_patience_stops_early(db_url):
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=100, patience=2, sampler="random", seed=1))
    st = study_state(optuna.load_study(study_name=STUDY_PREFIX + r.key, storage=db.storage))
    assert r.stop in ("patience", "exhausted") and st.since_best >= 2 or r.stop == "exhausted"
    assert r.measured < len(valid_configs(VECADD, P, INTERPRETER))


def test_a_batch_stops_where_other_workers_filled_the_budget(db_url, monkeypatch):
    """A worker with compile processes proposes a batch at a time, and reads the budget again before each
    proposal: trials that other workers start meanwhile count against it. (Read once per batch, four workers
    with eight compile processes each once ran 27 trials for a budget of 12.)"""
    from ds4c.tuning_db import tuner

    real, others = tuner._propose, []

    def propose(study, *a, **kw):
        if not others:  # another worker starts three trials while this one proposes its first batch
            others.extend(study.ask() for _ in range(3))
        return real(study, *a, **kw)

    monkeypatch.setattr(tuner, "_propose", propose)
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=4, sampler="random", seed=2, compile_workers=3))
    assert len(others) == 3 and r.measured == 1
    assert len(db.trials(r.key, (TrialState.RUNNING,))) == 3  # the other worker's, still in flight


def test_four_workers_share_one_key_without_lost_or_duplicated_trials(db_url):
    db = TuningDB(db_url)
    [r] = tune_problems([(VECADD, P)], db, INTERPRETER, workers=4,
                        settings=TuneSettings(trials=12, sampler="tpe", seed=7))
    key = key_fields(VECADD, P, INTERPRETER).key
    every = db.trials(key)
    numbers = [t.number for t in every]
    assert sorted(numbers) == list(range(len(every)))  # no gaps, no duplicates
    assert not [t for t in every if t.state == TrialState.RUNNING]
    counted = {t.number for t in every if t.state in (TrialState.COMPLETE, TrialState.FAIL)
               and t.user_attrs["counted"]}
    assert set(r.ran) == counted  # what the workers say they ran is exactly what the DB holds
    assert 12 <= len(counted) <= 12 + 3  # each worker may start one trial as the budget fills
    complete = [t for t in every if t.state == TrialState.COMPLETE]
    assert r.best_us == min(t.value for t in complete)
    assert all(type(t.user_attrs.get("pid")) is int for t in every)


def test_hostile_entries_are_rejected_with_a_warning(db_url, caplog):
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=4, sampler="random", seed=0))
    study = optuna.load_study(study_name=STUDY_PREFIX + r.key, storage=db.storage)
    hostile = [{"BLOCK": "__import__('os').system('false')", "TAIL": 1, "num_warps": 2},
               {"BLOCK": 1 << 40, "TAIL": 1, "num_warps": 2}, {"BLOCK": 64, "TAIL": 1},
               {"BLOCK": 64, "TAIL": 1, "num_warps": 2, "evil": 1}, {"BLOCK": 64.0, "TAIL": 1, "num_warps": 2},
               {"BLOCK": 16, "TAIL": 1, "num_warps": 4},  # in the space but not valid()
               "BLOCK=64", ["x"] * 100_000, None]
    for cfg in hostile:
        study.add_trial(optuna.trial.create_trial(value=1e-6, user_attrs={"config": cfg}))
    with caplog.at_level(logging.WARNING, logger="ds4c.tuning_db"):
        assert db.lookup(VECADD, P, INTERPRETER) == r.best_config
    assert len([m for m in caplog.messages if "rejected" in m]) == len(hostile)
    assert "ds4c:" + r.key in {s.study_name for s in db.storage.get_all_studies()}
    # a study holding only hostile entries gives None, not a crash
    other = {"n": 999, "dtype": "float32"}
    s2 = db.study(key_fields(VECADD, other, INTERPRETER), INTERPRETER)
    s2.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"config": {"BLOCK": -1}}))
    assert db.lookup(VECADD, {**other, "scale": 3.0}, INTERPRETER) is None


def test_nearest_token_count_is_borrowed_only_for_the_same_kernel(db_url, monkeypatch):
    vec = dataclasses.replace(VECADD, token_dims=("n",))
    db = TuningDB(db_url)
    small = tune(vec, {"n": 200, "dtype": "float32"}, db, INTERPRETER,
                 TuneSettings(trials=10, sampler="random", seed=1))
    big = tune(vec, {"n": 1000, "dtype": "float32"}, db, INTERPRETER,
               TuneSettings(trials=10, sampler="random", seed=2))
    assert small.best_config is not None and big.best_config is not None
    assert db.lookup(vec, {"n": 900, "dtype": "float32"}, INTERPRETER) == big.best_config
    assert db.lookup(vec, {"n": 150, "dtype": "float32"}, INTERPRETER) == small.best_config
    assert db.lookup(vec, {"n": 900, "dtype": "float16"}, INTERPRETER) is None  # other dtype
    assert db.lookup(vec, {"n": 900, "dtype": "float32", "scale": 2.0}, INTERPRETER) is None  # hole
    assert db.lookup(VECADD, {"n": 900, "dtype": "float32"}, INTERPRETER) is None  # no token dimension
    monkeypatch.setattr(keymod.torch, "__version__", "0.0.0-other")
    assert db.lookup(vec, {"n": 900, "dtype": "float32"}, INTERPRETER) is None  # other torch


def test_export_import_round_trip_into_fresh_sqlite(db_url, tmp_path):
    db = TuningDB(db_url)
    problems = [{"n": 300, "dtype": "float32"}, {"n": 500, "dtype": "float32", "scale": 0.5}]
    results = [tune(VECADD, p, db, INTERPRETER, TuneSettings(trials=10, sampler="random")) for p in problems]
    assert all(r.best_config is not None for r in results)
    data = export_entries(db)
    assert len(data["entries"]) == 2
    fresh = TuningDB(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert import_entries(fresh, data, resolve) == (2, 0)
    assert import_entries(fresh, data, resolve) == (2, 0)  # idempotent
    for p, r in zip(problems, results, strict=True):
        assert fresh.lookup(VECADD, p, INTERPRETER) == r.best_config
    assert sorted((e.key, e.us) for e in fresh.entries()) == sorted((r.key, r.best_us) for r in results)
    assert len(fresh.trials(results[0].key)) == 1


def test_import_rejects_every_malformed_entry(db_url):
    db = TuningDB(db_url)
    good = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=10, sampler="random"))
    assert good.best_config is not None
    entry = export_entries(db)["entries"][0]
    bad = [
        {**entry, "key": "0" * 64},
        {**entry, "config": {"BLOCK": "64", "TAIL": 1, "num_warps": 2}},
        {**entry, "config": {"BLOCK": 16, "TAIL": 1, "num_warps": 4}},
        {**entry, "us": float("nan")},
        {**entry, "us": -1.0},
        {**entry, "gpu_info": {"name": "x"}},
        {**entry, "fields": {**entry["fields"], "template": "no_such"}},
        "not an entry",
    ]
    unknown = {**entry["fields"], "template": "no_such"}
    bad[6]["key"] = KeyFields.from_json(unknown).key
    fresh = TuningDB(db_url.replace("tuning.db", "other.db")) if db_url.startswith("sqlite") else db
    assert import_entries(fresh, {"kind": "ds4c-tuning-export", "entries": bad}, resolve) == (0, len(bad))
    assert import_entries(fresh, {"kind": "something else"}, resolve) == (0, 1)
    assert fresh.lookup(VECADD, P, INTERPRETER) in (None, good.best_config)


def test_import_of_config_is_stored_as_indices_of_the_space():
    cfg = {"BLOCK": 64, "TAIL": 1, "num_warps": 4}
    assert params_of(VECADD, cfg) == {"BLOCK": 3, "TAIL": 1, "num_warps": 2}
    assert set(distributions(VECADD)) == set(VECADD.space.names)


def test_prune_drops_other_versions_and_gpus(db_url):
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=2, sampler="random"))
    f = key_fields(VECADD, P, INTERPRETER)
    old = KeyFields(**{**f.__dict__, "torch": "1.0.0"})
    other_gpu = KeyFields(**{**f.__dict__, "gpu": "NVIDIA A100", "capability": (8, 0)})
    db.study(old, INTERPRETER)
    db.study(other_gpu, INTERPRETER)
    assert db.prune() == [old.key]
    assert sorted(db.prune(keep_gpu=INTERPRETER.name)) == [other_gpu.key]
    assert [e.key for e in db.entries()] == [r.key]


def test_prune_drops_entries_of_another_template_text(db_url):
    db = TuningDB(db_url)
    r = tune(VECADD, P, db, INTERPRETER, TuneSettings(trials=2, sampler="random"))
    f = key_fields(VECADD, P, INTERPRETER)
    edited = KeyFields(**{**f.__dict__, "source_hash": "0" * 16})  # tuned before the template's text changed
    gone = KeyFields(**{**f.__dict__, "template": "no_such"})
    db.study(edited, INTERPRETER)
    db.study(gone, INTERPRETER)
    assert db.prune() == []  # versions and GPU as this machine's: kept without a resolver
    assert sorted(db.prune(resolve=resolve)) == sorted([edited.key, gone.key])
    assert [e.key for e in db.entries()] == [r.key]


def test_unreachable_url_is_one_clear_error_or_falls_back():
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    with pytest.raises(Ds4cError) as e:
        TuningDB(url)
    msg = str(e.value)
    assert "\n" not in msg and "cannot open tuning database" in msg and "secret" not in msg
    db = TuningDB(url, fallback=True)
    assert db.url == default_url() and db.url.startswith("sqlite:///")
    assert db.entries() == []


def test_default_url_is_in_the_cache_dir_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("DS4C_DB", raising=False)
    assert default_url().endswith("/tuning.db") and str(tmp_path) not in default_url()
    monkeypatch.setenv("DS4C_DB", f"sqlite:///{tmp_path / 'env.db'}")
    assert TuningDB().url == f"sqlite:///{tmp_path / 'env.db'}"


def test_nothing_valid_means_no_trials(db_url):
    class Never(type(VECADD)):
        pass

    never = Never(**{**VECADD.__dict__, "valid": lambda c, p, g: False})
    db = TuningDB(db_url)
    r = tune(never, P, db, INTERPRETER, TuneSettings(trials=5))
    assert r.stop == "no-valid-config" and r.best_config is None and r.measured == 0
    assert math.isinf(study_state(optuna.load_study(study_name=STUDY_PREFIX + r.key,
                                                    storage=db.storage)).best)


def test_tuning_workers_share_the_cpus_for_compile_processes(monkeypatch):
    """On a GPU each tuning process builds candidates in compile processes: 8 for one, the CPUs divided among
    several (4 workers on 16 CPUs once started 32), at least 1; none under the interpreter."""
    import torch

    from ds4c.tuning_db import tuner

    monkeypatch.setattr(tuner, "default_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(tuner.os, "cpu_count", lambda: 16)
    assert [tuner.default_compile_workers(n) for n in (1, 2, 4, 32)] == [8, 8, 4, 1]
    monkeypatch.setattr(tuner, "default_device", lambda: torch.device("cpu"))
    assert tuner.default_compile_workers(4) == 0


def test_a_config_stored_before_a_parameter_existed_reads_with_its_implied_value(db_url, tmp_path):
    """A parameter added to a space later (vecadd's TAIL here, declared implied=0) leaves stored configs
    without it: the database completes them on every read and import, and the result passes the space."""
    vec = dataclasses.replace(VECADD, space=dataclasses.replace(VECADD.space, implied=(("TAIL", 0),)))
    p = {"n": 256, "dtype": "float32"}  # a multiple of every BLOCK: TAIL=0 is valid
    db = TuningDB(db_url)
    fields = key_fields(vec, p, INTERPRETER)
    study = db.study(fields, INTERPRETER)
    old = {"BLOCK": 64, "num_warps": 2}
    study.add_trial(optuna.trial.create_trial(value=5.0, user_attrs={"config": old}))
    assert db.lookup(vec, p, INTERPRETER) == {**old, "TAIL": 0}
    assert db.lookup(VECADD, p, INTERPRETER) is None  # without the declaration it is not in the space
    data = export_entries(db)
    assert data["entries"][0]["config"] == old  # stored as it came
    fresh = TuningDB(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert import_entries(fresh, data, lambda name: vec) == (1, 0)
    assert fresh.lookup(vec, p, INTERPRETER) == {**old, "TAIL": 0}
    assert vec.space.complete({**old, "TAIL": 1}) == {**old, "TAIL": 1}  # a value present is kept
    assert vec.space.complete("x") == "x"


def test_the_tuner_sees_a_config_stored_before_a_parameter_existed_as_measured(db_url):
    """The exhaustive grid over a space that gained TAIL (implied 0) measures every valid config but the one a
    trial stored without TAIL already measured."""
    vec = dataclasses.replace(VECADD, space=dataclasses.replace(VECADD.space, implied=(("TAIL", 0),)))
    p = {"n": 256, "dtype": "float32"}
    db = TuningDB(db_url)
    study = db.study(key_fields(vec, p, INTERPRETER), INTERPRETER)
    old = {"BLOCK": 64, "num_warps": 2}
    study.add_trial(optuna.trial.create_trial(value=5.0, user_attrs={"config": old, "counted": True}))
    r = tune(vec, p, db, INTERPRETER, TuneSettings(trials=1000, sampler="grid"))
    valid = valid_configs(vec, p, INTERPRETER)
    assert r.stop == "exhausted" and r.measured == len(valid)
    measured = [t.user_attrs["config"] for t in db.trials(r.key, (TrialState.COMPLETE, TrialState.FAIL))
                if t.user_attrs.get("counted")]
    assert {**old, "TAIL": 0} not in measured
    assert len(measured) == len(valid)  # the old trial and the rest, each once

"""A worker killed with SIGKILL mid-trial leaves the database usable; the next run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from optuna.trial import TrialState
from vecadd_template import VECADD

from ds4c.device import INTERPRETER
from ds4c.tuning_db.db import TuningDB
from ds4c.tuning_db.key import key_fields
from ds4c.tuning_db.tuner import TuneSettings, tune

P = {"n": 300, "dtype": "float32"}

CHILD = """
import sys, time
sys.path.insert(0, {testdir!r})
from vecadd_template import VECADD
from ds4c.device import INTERPRETER
from ds4c.tuning_db import tuner
from ds4c.tuning_db.db import TuningDB

def hang(*args, **kwargs):  # the trial never finishes: the parent kills this process inside it
    time.sleep(600)

tuner.measure = hang
tuner.tune(VECADD, {problem!r}, TuningDB({url!r}), INTERPRETER, tuner.TuneSettings(trials=5, sampler="random"))
"""


def test_sigkill_mid_trial_then_resume(db_url, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(testdir=str(Path(__file__).parent), problem=P, url=db_url))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.Popen([sys.executable, str(script)], env=env)
    db = TuningDB(db_url)
    key = key_fields(VECADD, P, INTERPRETER).key
    deadline = time.monotonic() + 120
    try:
        while not [t for t in db.trials(key, (TrialState.RUNNING,)) if t.user_attrs.get("pid") == child.pid]:
            assert child.poll() is None, "the child exited before starting a trial"
            assert time.monotonic() < deadline, "the child never started a trial"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert [t.number for t in db.trials(key, (TrialState.RUNNING,))]

    r = tune(VECADD, P, TuningDB(db_url), INTERPRETER, TuneSettings(trials=5, sampler="random", seed=4))
    assert r.stop == "budget" and r.measured == 5
    trials = db.trials(key)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    dead = [t for t in trials if t.user_attrs.get("pid") == child.pid]
    assert dead and all(t.state == TrialState.FAIL and "died" in t.user_attrs["reason"] for t in dead)
    assert not any(t.user_attrs.get("counted") for t in dead)  # the budget counts real measurements only

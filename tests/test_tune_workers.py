"""Several worker processes on one study: none lost or duplicated, and a worker killed with SIGKILL
mid-trial leaves its trial FAIL while the study continues. JournalStorage and SQLite run in the normal
suite; PostgreSQL runs where `LEANJAX_TEST_POSTGRES_URL` is set (scripts/ci_postgres.sh sets it)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from leanjax import tune

ROOT = Path(__file__).resolve().parents[1]
# A worker of leanjax.tune.run_worker with a cheap objective (no JAX), so the test measures the protocol.
WORKER = """
import os, sys, time, optuna
from leanjax import tune
spec, n, worker, hang = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
storage = tune.open_storage(spec, heartbeat_interval=1, grace_period=4)
study = tune.open_study("s", storage, sampler="random", pruner="none", seed=0, worker=worker,
                        direction="minimize")
def objective(trial, params):
    trial.set_user_attr("pid", os.getpid())
    if hang != "-":
        open(hang, "w").write(str(trial.number))
        time.sleep(600)
    time.sleep(0.1)
    return (params["x"] - 0.3) ** 2, 10, False
tune.run_worker(study, objective, space={"x": ("float", 0.0, 1.0)}, n_trials=n, heartbeat_interval=1,
                grace_period=4)
"""


def _worker(spec, n, worker, hang="-"):
    return subprocess.Popen([sys.executable, "-c", WORKER, spec, str(n), str(worker), hang], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trials(spec):
    return optuna.load_study(study_name="s", storage=tune.open_storage(spec, heartbeat_interval=1,
                                                                       grace_period=4)).trials


def _reset(spec):
    if spec.startswith("postgresql"):
        storage = tune.open_storage(spec, heartbeat_interval=1, grace_period=4)
        if "s" in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name="s", storage=storage)


def _spec(kind, tmp_path):
    if kind == "postgresql":
        url = os.environ.get("LEANJAX_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("LEANJAX_TEST_POSTGRES_URL is not set (scripts/ci_postgres.sh starts a server)")
        _reset(url)
        return url
    return {"journal": f"journal:{tmp_path}/study.log", "sqlite": f"sqlite:///{tmp_path}/study.db"}[kind]


# SQLite's two-worker case repeats the journal's protocol test at ~30 s: it runs with the slow tests. Its
# killed-worker case stays: it is the Optuna RDB heartbeat path that PostgreSQL shares.
KINDS_WORKERS = ["journal", pytest.param("sqlite", marks=pytest.mark.slow), "postgresql"]
KINDS_KILL = ["journal", "sqlite", "postgresql"]


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.parametrize("kind", KINDS_WORKERS)
def test_two_workers_finish_a_study_without_lost_or_duplicated_trials(kind, tmp_path):
    spec = _spec(kind, tmp_path)
    n = 12
    procs = [_worker(spec, n, w) for w in range(2)]
    for p in procs:
        _finish(p)
    trials = _trials(spec)
    states = {t.state for t in trials}
    assert states == {optuna.trial.TrialState.COMPLETE}  # nothing lost (RUNNING) or failed
    assert n <= len(trials) <= n + 1                       # counting and asking race by at most a trial
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t.params["x"] for t in trials}) == len(trials)  # no configuration drawn twice
    assert len({t.user_attrs["pid"] for t in trials}) == 2      # both workers did work


@pytest.mark.parametrize("kind", KINDS_KILL)
def test_a_worker_killed_mid_trial_fails_its_trial_and_the_study_continues(kind, tmp_path):
    spec = _spec(kind, tmp_path)
    marker = tmp_path / "hanging"
    victim = _worker(spec, 4, 0, hang=str(marker))
    deadline = time.time() + 180
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), victim.communicate()[1][-3000:]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed = int(marker.read_text())
    assert {t.number: t.state for t in _trials(spec)}[killed] == optuna.trial.TrialState.RUNNING

    _finish(_worker(spec, 4, 1))
    trials = {t.number: t for t in _trials(spec)}
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    complete = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len(trials) == 5

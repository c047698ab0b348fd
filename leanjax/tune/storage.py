"""Where a study lives, and how a crashed worker's trial is failed instead of RUNNING forever.

- SQLite (`sqlite:///path.db`, the default in the workdir) or a bare `*.db` path: one machine; a study
  resumes after a crash.
- A journal file (`journal:/path/study.log` or a bare `*.log` path): several worker processes on one
  machine, with file locks and no database (Optuna's `JournalStorage`).
- Any other SQLAlchemy URL (`postgresql://user@host/db`): workers on several machines.

When a worker dies mid-trial (SIGKILL, OOM, a lost machine) nothing tells the storage, so the trial would
stay RUNNING for ever. Each running trial therefore beats a heartbeat from a background thread; any worker
fails trials whose heartbeat is older than the grace period before it asks for a new one. RDB storages use
Optuna's own heartbeat (`RDBStorage(heartbeat_interval=..., grace_period=...)` and
`optuna.storages.fail_stale_trials`); `JournalStorage` has none in Optuna 5, so the same protocol is kept
here in a trial system attribute.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator

import optuna
import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

HEARTBEAT_ATTR = "leanjax:heartbeat"


def storage_url(spec: str, workdir: str) -> str:
    """The storage a config's `storage` string means: empty is SQLite in `workdir`."""
    return spec or f"sqlite:///{workdir.rstrip('/')}/study.db"


def open_storage(spec: str, *, heartbeat_interval: int = 5, grace_period: int = 20) -> BaseStorage:
    """An Optuna storage for `spec` (see the module docstring), with heartbeats enabled for RDB URLs."""
    if grace_period <= heartbeat_interval:
        raise ValueError(f"grace_period ({grace_period}s) must exceed heartbeat_interval ({heartbeat_interval}s)")
    if spec.startswith("journal:") or spec.endswith(".log"):
        return JournalStorage(JournalFileBackend(spec.removeprefix("journal:")))
    if spec.endswith(".db") and "://" not in spec:
        spec = f"sqlite:///{spec}"
    if "://" not in spec:
        raise ValueError(f"storage {spec!r}: use sqlite:///path.db, journal:/path.log or a database URL")
    # SQLite serialises writers; a generous busy timeout lets several local processes share one file.
    engine_kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5, and what we need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(spec, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                  grace_period=grace_period)
        except sqlalchemy.exc.IntegrityError:
            # Workers started together race to create the schema; the loser finds it made and retries.
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not initialise the study schema in {spec}")


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval: float) -> Iterator[None]:
    """Beat `trial`'s heartbeat every `interval` seconds while the block runs."""
    storage, trial_id = study._storage, trial._trial_id

    def beat():
        if isinstance(storage, RDBStorage):
            storage.record_heartbeat(trial_id)
        else:
            storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    stop = threading.Event()

    def loop():
        while not stop.wait(interval):
            with contextlib.suppress(UpdateFinishedTrialError):  # failed by another worker meanwhile
                beat()

    beat()
    thread = threading.Thread(target=loop, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """Mark RUNNING trials whose heartbeat stopped more than `grace_period` seconds ago as FAIL.

    Returns the numbers of the trials this call failed (another worker may have failed some first).
    """
    if isinstance(study._storage, RDBStorage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        return sorted(after - before)
    failed, now = [], time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get(HEARTBEAT_ATTR, t.datetime_start.timestamp())
        if now - last > grace_period:
            with contextlib.suppress(UpdateFinishedTrialError, RuntimeError):
                if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    failed.append(t.number)
    return failed

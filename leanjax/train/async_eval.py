"""Evaluation that the training loop never waits for.

Two forms, both writing `eval_*` rows tagged with the *training step* the params came from, into the
run's own `metrics.jsonl` and TensorBoard directory (so `plot_curves` and TensorBoard show them beside
the training curves):

- `AsyncEvaluator`: in process. At an eval point it copies the params to the evaluation devices (a
  snapshot: the train step donates its state, so the live buffers are about to be reused) and returns;
  a background thread runs `eval_fn` on the snapshot while training continues. Plug it into `fit` with
  `fit(..., eval_every=N, **evaluator.fit_hooks())`.
- `follow_checkpoints`: a sidecar process (`python -m leanjax.experiments.<name> --mode=eval_sidecar
  --workdir W`). It polls the run's orbax checkpoints, pins each new one with hard links (the trainer's
  `max_to_keep` rotation can then delete it without pulling it from under a restore), restores it onto
  its own devices, evaluates it exactly once (a state file survives sidecar restarts), and can stop the
  run early or feed HPO pruning through `on_result`.

Stopping the trainer from outside goes through a `STOP` file in the workdir (`request_stop`), which
`fit` polls at its log points.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax

from leanjax.train.writers import _jsonable

EvalFn = Callable[[Any], Mapping[str, float]]
STOP_FILE = "STOP"


# ---------------------------------------------------------------------------------------------- logs


class EvalLog:
    """Appends `{"step", "eval_<k>": v}` rows to a run's `metrics.jsonl` and TensorBoard directory.

    One `os.write` per row on an `O_APPEND` descriptor, so rows from the trainer and an evaluator in
    another thread or process never interleave within a line. TensorBoard gets its own event file in
    the run's `tb/` directory (TensorBoard merges the files of a directory).
    """

    def __init__(self, workdir: str | os.PathLike, prefix: str = "eval_", tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.prefix = prefix
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"), filename_suffix=f".{prefix.strip('_')}")

    def write(self, step: int, metrics: Mapping[str, Any], **extra: Any) -> dict:
        row = {"step": int(step), **{self.prefix + k: _jsonable(v) for k, v in metrics.items()},
               **{k: _jsonable(v) for k, v in extra.items()}}
        os.write(self._fd, (json.dumps(row) + "\n").encode())
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(self.prefix + k, float(v), int(step))
            self._tb.flush()
        return row

    def close(self) -> None:
        os.close(self._fd)
        if self._tb is not None:
            self._tb.close()


def stop_file(workdir: str | os.PathLike) -> str:
    """The file whose existence makes `leanjax.train.fit` in `workdir` stop at its next log point."""
    return os.path.join(workdir, STOP_FILE)


def request_stop(workdir: str | os.PathLike, reason: str) -> None:
    with open(stop_file(workdir), "w") as f:
        f.write(reason + "\n")


# --------------------------------------------------------------------------------- in-process


@dataclasses.dataclass(frozen=True)
class EvalResult:
    step: int
    metrics: dict[str, float]
    submitted_s: float  # perf_counter when the snapshot was taken
    finished_s: float

    @property
    def latency_s(self) -> float:
        return self.finished_s - self.submitted_s


class AsyncEvaluator:
    """Runs `eval_fn(params) -> {name: float}` on snapshots in a background thread.

    `placement` (a `jax.Device` or `Sharding`) is where snapshots go: devices of their own keep the
    evaluation off the training devices; None copies them on the devices they are on. Besides the one
    being evaluated, at most `max_pending` snapshots wait; when a newer one arrives the oldest waiting
    one is dropped (its step is recorded in `skipped`), so evaluation never falls ever further behind and
    the newest snapshot, the final params included, is always evaluated. `stop_fn(step, metrics)`
    returning True makes the next eval point stop the run (through `fit`'s `on_eval`).
    """

    def __init__(self, eval_fn: EvalFn, *, workdir: str | os.PathLike | None = None, placement: Any = None,
                 stop_fn: Callable[[int, dict], bool] | None = None, max_pending: int = 1):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.eval_fn, self.placement, self.stop_fn, self.max_pending = eval_fn, placement, stop_fn, max_pending
        self.log = EvalLog(workdir) if workdir is not None else None
        self.results: list[EvalResult] = []
        self.skipped: list[int] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leanjax-eval")
        self._pending: list[tuple[int, Future]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._error: BaseException | None = None
        self._params: Any = None  # handed from fit_hooks' eval_fn to its on_eval

    def snapshot(self, params: Any) -> Any:
        """A copy of `params` that no later train step can donate away, on the evaluation devices."""
        # may_alias=False: a put onto the devices the params already live on must still copy.
        copy = jax.device_put(params, self.placement, may_alias=False)
        return jax.block_until_ready(copy)  # the copy must be taken before the next step donates

    def submit(self, params: Any, step: int) -> None:
        """Evaluate `params` of training step `step` in the background (see the class docstring for what
        happens when evaluation is behind)."""
        self._raise_if_failed()
        with self._lock:
            self._pending = [(s, f) for s, f in self._pending if not f.done()]
            waiting = [(s, f) for s, f in self._pending if not f.running()]
            while len(waiting) >= self.max_pending:
                s, f = waiting.pop(0)
                if f.cancel():  # False: it started running meanwhile, so it no longer waits
                    self._pending.remove((s, f))
                    self.skipped.append(s)
            t0 = time.perf_counter()
            snap = self.snapshot(params)
            self._pending.append((int(step), self._pool.submit(self._run, snap, int(step), t0)))

    def _run(self, snap: Any, step: int, t0: float) -> None:
        try:
            metrics = {k: float(v) for k, v in self.eval_fn(snap).items()}
        except BaseException as e:  # noqa: BLE001 - surfaced in the training thread by _raise_if_failed
            self._error = e
            return
        result = EvalResult(step, metrics, t0, time.perf_counter())
        with self._lock:
            self.results.append(result)
            if self.log is not None:
                self.log.write(step, metrics)
            if self.stop_fn is not None and self.stop_fn(step, metrics):
                self._stop = True

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"asynchronous evaluation failed: {self._error!r}") from self._error

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def fit_hooks(self) -> dict[str, Callable]:
        """`eval_fn` and `on_eval` for `leanjax.train.fit`.

        `fit` calls `eval_fn(params)` then `on_eval(step, metrics)` at each eval point, both before the
        next train step can donate the params; the first hands the params over, the second (which knows
        the step) snapshots and submits them, so every result is tagged with the step of the params it
        measured. `eval_fn` returns no metrics (`fit` writes no row for it): results are written at their
        own step when they finish.
        """

        def eval_fn(params: Any) -> dict:
            self._params = params
            return {}

        def on_eval(step: int, _metrics: dict) -> bool:
            params, self._params = self._params, None
            self.submit(params, step)
            return self._stop

        return {"eval_fn": eval_fn, "on_eval": on_eval}

    def close(self, wait: bool = True) -> list[EvalResult]:
        """Finish (or with `wait=False`, abandon) pending evaluations; returns the results by step."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if self.log is not None:
            self.log.close()
            self.log = None
        self._raise_if_failed()
        return sorted(self.results, key=lambda r: r.step)

    def __enter__(self) -> AsyncEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close(wait=exc[0] is None)


# ------------------------------------------------------------------------------------- sidecar


@dataclasses.dataclass
class SidecarReport:
    evaluated: list[int]  # steps evaluated, in order (this and earlier sidecar runs)
    skipped: list[int]  # steps that vanished before they could be pinned
    results: dict[int, dict[str, float]]  # this run's results
    stopped_run: bool


def committed_steps(directory: str | os.PathLike) -> list[int]:
    """Steps with a finished checkpoint. orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it to
    `<step>` on commit, so on a local or network filesystem an all-digit name is a committed step."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def pin(src: str, dst: str) -> bool:
    """Hard-link the checkpoint tree `src` into `dst` (no data copied). The links keep the files alive
    when the trainer deletes `src`. False (and nothing left behind) if `src` vanished first."""
    try:
        for root, _dirs, files in os.walk(src):
            target = os.path.join(dst, os.path.relpath(root, src))
            os.makedirs(target, exist_ok=True)
            for name in files:
                os.link(os.path.join(root, name), os.path.join(target, name))
        if not os.path.isdir(src):  # deleted while walking: what was linked may be incomplete
            raise FileNotFoundError(src)
        return os.path.isdir(dst)
    except FileNotFoundError:
        shutil.rmtree(dst, ignore_errors=True)
        return False


class _Pinner(threading.Thread):
    """Pins every new committed checkpoint as soon as it appears, while the sidecar evaluates others."""

    def __init__(self, ckpt_dir: str, pinned_dir: str, seen: set[int], poll_s: float, on_skip: Callable[[int], None]):
        super().__init__(daemon=True, name="leanjax-pinner")
        self.ckpt_dir, self.pinned_dir, self.seen = ckpt_dir, pinned_dir, seen
        self.poll_s, self.on_skip = poll_s, on_skip
        self.lock = threading.Lock()
        self.last_new = time.monotonic()
        self._halt = threading.Event()

    def pin_new(self) -> None:
        for step in committed_steps(self.ckpt_dir):
            with self.lock:
                if step in self.seen or os.path.isdir(os.path.join(self.pinned_dir, str(step))):
                    continue
                self.last_new = time.monotonic()
                if not pin(os.path.join(self.ckpt_dir, str(step)), os.path.join(self.pinned_dir, str(step))):
                    self.seen.add(step)
                    self.on_skip(step)

    def run(self) -> None:
        while not self._halt.wait(self.poll_s):
            self.pin_new()

    def halt(self) -> None:
        self._halt.set()
        self.join()


def follow_checkpoints(workdir: str | os.PathLike, template: Any, eval_fn: EvalFn, *, poll_s: float = 1.0,
                       done: Callable[[], bool] | None = None, on_result: Callable[[int, dict], bool] | None = None,
                       idle_timeout_s: float | None = None, log: bool = True, verbose: bool = True) -> SidecarReport:
    """Evaluate every checkpoint of the run in `workdir` once, as it appears, until the run is done.

    `template` is the train state (arrays or `jax.ShapeDtypeStruct`s) whose structure and shardings the
    checkpoint is restored into: put it on the sidecar's own devices. `eval_fn(params)` returns
    `{name: float}`; rows `eval_<name>` go to the run's logs at the checkpoint's step. `on_result(step,
    metrics)` returning True writes the run's STOP file and ends the sidecar (early stopping, or an HPO
    pruner: `lambda s, m: trial.report(m["loss"], s) or trial.should_prune()`).

    A pinning thread links each new checkpoint every `poll_s` seconds, so a checkpoint survives the
    trainer's rotation as long as `poll_s` is shorter than the time the trainer takes to save
    `max_to_keep` more; one deleted before it was pinned is reported in `skipped`. The sidecar ends when
    `done()` is true and every committed checkpoint has been evaluated (default `done`: the run wrote
    `summary.json`), or after `idle_timeout_s` without a new checkpoint.
    """
    from leanjax.train.checkpoint import Checkpointer

    workdir = os.path.abspath(workdir)
    own = os.path.join(workdir, "eval_sidecar")
    pinned_dir = os.path.join(own, "pinned")
    state_path = os.path.join(own, "state.json")
    os.makedirs(pinned_dir, exist_ok=True)
    done = done or (lambda: os.path.exists(os.path.join(workdir, "summary.json")))
    record = {"evaluated": [], "skipped": []}
    if os.path.exists(state_path):
        with open(state_path) as f:
            record = json.load(f)
    seen = set(record["evaluated"]) | set(record["skipped"])
    results: dict[int, dict[str, float]] = {}

    def save_record() -> None:
        tmp = state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, state_path)

    def skipped(step: int, why: str) -> None:
        record["skipped"].append(step)
        save_record()
        if verbose:
            print(f"[eval_sidecar] step {step} {why}: skipped", flush=True)

    pinner = _Pinner(os.path.join(workdir, "checkpoints"), pinned_dir, seen, poll_s,
                     lambda s: skipped(s, "was deleted before it could be pinned"))
    writer = EvalLog(workdir) if log else None
    pinner.start()
    stopped = False
    try:
        while not stopped:
            finished = done()  # read before pinning, so a final checkpoint committed just now is seen
            pinner.pin_new()
            waiting = [s for s in committed_steps(pinned_dir) if s not in seen]
            for step in waiting:
                reader = Checkpointer(pinned_dir, keep=len(waiting) + 1, async_save=False)
                try:
                    state, _, _ = reader.restore(template, step)
                except (FileNotFoundError, OSError, ValueError) as e:
                    metrics = None  # pinned incompletely (it vanished mid-link): skip, keep following
                    with pinner.lock:
                        seen.add(step)
                        skipped(step, f"could not be restored ({type(e).__name__})")
                else:
                    metrics = {k: float(v) for k, v in eval_fn(state.params).items()}
                    results[step] = metrics
                    if writer is not None:
                        writer.write(step, metrics)
                    with pinner.lock:
                        seen.add(step)
                        record["evaluated"].append(step)
                        save_record()
                    if verbose:
                        print(f"[eval_sidecar] step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                              flush=True)
                finally:
                    reader.close()
                shutil.rmtree(os.path.join(pinned_dir, str(step)), ignore_errors=True)
                if metrics is not None and on_result is not None and on_result(step, metrics):
                    request_stop(workdir, f"eval_sidecar: stop requested after evaluating step {step}")
                    stopped = True
                    break
            if stopped or waiting:
                continue
            if finished and not [s for s in committed_steps(pinned_dir) if s not in seen]:
                break
            if idle_timeout_s is not None and time.monotonic() - pinner.last_new > idle_timeout_s:
                if verbose:
                    print(f"[eval_sidecar] no new checkpoint for {idle_timeout_s:.0f}s: stopping", flush=True)
                break
            time.sleep(poll_s)
    finally:
        pinner.halt()
        if writer is not None:
            writer.close()
    return SidecarReport(record["evaluated"], record["skipped"], results, stopped)

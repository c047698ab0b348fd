"""The canonical training loop.

`fit` drives a jitted `train_step(state, batch) -> (state, metrics)` over a resumable data iterator:

- resumes from the newest checkpoint in `workdir` (train state, RNG and data position), so re-running
  the same command after a crash or a SIGKILL continues bit-for-bit where the last checkpoint left off;
- SIGTERM (preemption) finishes the current step, saves, and returns with `preempted=True`;
- a file `workdir/STOP` (an eval sidecar's early stop, or a person's) ends the run at the next log point;
- a NaN/Inf loss stops the run with `NonFiniteLossError` naming the step; the last checkpoint saved
  before it stays the newest (a state is only ever saved after its losses were checked);
- metrics go to `metrics.jsonl` and TensorBoard; a progress line shows steps/s and ETA;
- a run restarted after its final checkpoint trains nothing and returns what the finished run did: its
  logged rows, its final evaluation (from the log) and its speed (`fit_stats.json`, written before the
  final checkpoint), so the experiment's summary is the same as an uninterrupted run's.

Per-step metrics stay on the device and are fetched once per `log_every` steps, so the host never
stalls the accelerator between log points.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from leanjax.parallel.multihost import process_dir
from leanjax.train.checkpoint import Checkpointer
from leanjax.train.writers import MetricWriter, Progress, mean_rows

STATS_FILE = "fit_stats.json"


class NonFiniteLossError(FloatingPointError):
    def __init__(self, step: int, value: float, last_checkpoint: int | None):
        self.step, self.value, self.last_checkpoint = step, value, last_checkpoint
        kept = (f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint is not None
                else "no checkpoint had been saved yet")
        super().__init__(f"loss is {value} at step {step}; training stopped and {kept}. "
                         "Lower the learning rate, enable gradient clipping, or check the data.")


@dataclasses.dataclass
class FitResult:
    state: Any
    history: list[dict]          # the log's rows (train and eval), earlier runs' up to the resume step included
    start_step: int              # the step this run resumed from (0 for a fresh run)
    steps_per_s: float           # wall-clock rate incl. data loading; excludes compile, eval, checkpoints
    compile_s: float             # (both of the run that trained the last steps, when this one trained none)
    preempted: bool = False
    last_eval: dict | None = None


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop polls, restoring the previous handler on exit."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: preemption handling is the caller's
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def fit(state: Any, train_step: Callable, train_iter: Iterator, *, num_steps: int, workdir: str,
        eval_fn: Callable[[Any], dict] | None = None, eval_every: int = 0, checkpoint_every: int = 0,
        keep_checkpoints: int = 3, log_every: int = 50, progress: bool = True,
        on_eval: Callable[[int, dict], bool | None] | None = None, desc: str = "train") -> FitResult:
    """Train `state` to `num_steps` total steps, resuming from the newest checkpoint in `workdir`.

    Args:
      state: the initial `TrainState` (its structure is what a checkpoint must match).
      train_step: `train_step(state, batch) -> (state, metrics)`, jitted (it is compiled ahead of time and
        timed on its own).
      train_iter: yields batches and has grain's `get_state()` / `set_state()` (the data position saved).
      num_steps: the total steps (a resumed run trains the rest).
      workdir: checkpoints, `metrics.jsonl`, TensorBoard events and `fit_stats.json` go here (in a multi-
        process run the checkpoints are shared and the other files are process 0's; the others' go under
        `workdir/process_<i>`).
      eval_fn: `eval_fn(params) -> dict`, run every `eval_every` steps and at the end.
      eval_every: 0: at the end only.
      checkpoint_every: 0: at the end only (and on SIGTERM or an early stop).
      keep_checkpoints: the newest checkpoints kept.
      log_every: steps per logged row (the metrics are fetched from the device then).
      progress: show a progress line.
      on_eval: `on_eval(step, metrics)`; returning True stops early.
      desc: the run's name in messages.

    Returns:
      A `FitResult`: the final state, the log's rows, the step it resumed from, steps/s, compile seconds,
      whether SIGTERM stopped it, and the last evaluation.
    """
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=keep_checkpoints)
    start = 0
    if ckpt.latest_step() is not None:
        state, data_state, start = ckpt.restore(state)
        if data_state:
            train_iter.set_state(data_state)
        print(f"[{desc}] resumed from checkpoint at step {start} in {ckpt.directory}", flush=True)
    logdir = process_dir(workdir)  # one process per file: the others log under workdir/process_<i>
    writer = MetricWriter(logdir, resume_step=start)
    bar = Progress(num_steps, initial=start, desc=desc, enabled=progress)
    history: list[dict] = list(writer.resumed_rows)
    pending: list[tuple[int, dict]] = []
    last_saved = ckpt.latest_step()
    compile_s, overhead, train_time, t_train = 0.0, 0.0, 0.0, time.perf_counter()
    last_eval = None
    step = start
    stop_file = os.path.join(workdir, "STOP")  # written by an eval sidecar or a person to stop early

    def flush() -> None:
        """Fetch pending per-step metrics, check the losses, write one averaged row."""
        nonlocal pending
        if not pending:
            return
        rows = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, rows):
            loss = float(np.asarray(m["loss"]))
            if not math.isfinite(loss):
                writer.write(s, {"loss": loss})
                raise NonFiniteLossError(s, loss, last_saved)
        row = mean_rows({k: float(np.asarray(v)) for k, v in m.items()} for m in rows)
        writer.write(pending[-1][0], row)
        history.append({"step": pending[-1][0], **row})
        bar.update(pending[-1][0], loss=row["loss"])
        pending = []

    def save(s: int) -> None:
        nonlocal last_saved
        flush()
        ckpt.save(s, state, train_iter.get_state())
        last_saved = s

    def run_eval(s: int) -> bool:
        nonlocal last_eval
        flush()
        metrics = eval_fn(state.params)
        row = {f"eval_{k}": v for k, v in metrics.items()}
        if row:  # an asynchronous evaluator returns {} and writes its results at their own step
            writer.write(s, row)
            history.append({"step": s, **row})
            last_eval = metrics
        return bool(on_eval(s, metrics)) if on_eval is not None else False

    try:
        with _SigtermFlag() as sigterm:
            preempted = stopped = False
            while step < num_steps:
                batch = next(train_iter)
                if step == start:  # ahead-of-time compile, timed on its own
                    t0 = time.perf_counter()
                    train_step = train_step.lower(state, batch).compile() \
                        if hasattr(train_step, "lower") else train_step
                    compile_s = time.perf_counter() - t0
                    t_train = time.perf_counter()
                state, metrics = train_step(state, batch)
                step += 1
                pending.append((step, metrics))
                due_eval = eval_fn is not None and eval_every and step % eval_every == 0 and step < num_steps
                # The final step is saved after the final evaluation and fit_stats.json (below), so that a
                # final checkpoint implies both.
                due_save = checkpoint_every and step % checkpoint_every == 0 and step < num_steps
                if step % log_every == 0 or step == num_steps or due_eval or due_save:
                    flush()  # waits for the step: counted as training time
                    stopped = stopped or os.path.exists(stop_file)
                t0 = time.perf_counter()
                if due_eval:
                    stopped = run_eval(step) or stopped
                if due_save:
                    save(step)
                overhead += time.perf_counter() - t0
                if sigterm.raised or stopped:
                    flush()
                    train_time = time.perf_counter() - t_train - overhead
                if sigterm.raised:
                    preempted = True
                    print(f"[{desc}] SIGTERM at step {step}: saving a checkpoint and exiting", flush=True)
                    save(step)
                    break
                if stopped:
                    print(f"[{desc}] early stop requested at step {step} (by on_eval or {stop_file})", flush=True)
                    save(step)
                    break
            else:
                flush()
                train_time = time.perf_counter() - t_train - overhead
                logged_eval = _logged_eval(history, step) if step == start else None
                if logged_eval:  # restarted after the final checkpoint: this step was evaluated already
                    last_eval = logged_eval
                elif eval_fn is not None:
                    run_eval(step)
                if last_saved != step:
                    _write_stats(logdir, step, (step - start) / train_time if train_time > 0 else math.nan,
                                 compile_s)
                    save(step)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    steps_per_s = (step - start) / train_time if step > start and train_time > 0 else float("nan")
    if step == start:  # nothing trained here: the speed of the run that trained these steps
        steps_per_s, compile_s = _read_stats(logdir, step, steps_per_s, compile_s)
    return FitResult(state=state, history=history, start_step=start, steps_per_s=steps_per_s,
                     compile_s=compile_s, preempted=preempted, last_eval=last_eval)


def _logged_eval(history: list[dict], step: int) -> dict | None:
    """The evaluation logged at `step` (`eval_` keys, prefix dropped), or None."""
    row = next((r for r in reversed(history) if r["step"] == step and any(k.startswith("eval_") for k in r)), None)
    if row is None:
        return None
    return {k.removeprefix("eval_"): float(v) if isinstance(v, str) else v  # 'nan' / 'inf' as logged
            for k, v in row.items() if k.startswith("eval_")}


def _write_stats(workdir: str, step: int, steps_per_s: float, compile_s: float) -> None:
    path = os.path.join(workdir, STATS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"step": step, "steps_per_s": repr(steps_per_s), "compile_s": repr(compile_s)}, f)
    os.replace(path + ".tmp", path)


def _read_stats(workdir: str, step: int, steps_per_s: float, compile_s: float) -> tuple[float, float]:
    """The speed `_write_stats` recorded for a run that ended at `step`, else the given figures."""
    path = os.path.join(workdir, STATS_FILE)
    if not os.path.exists(path):
        return steps_per_s, compile_s
    with open(path) as f:
        stats = json.load(f)
    if stats.get("step") != step:
        return steps_per_s, compile_s
    return float(stats["steps_per_s"]), float(stats["compile_s"])

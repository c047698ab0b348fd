"""Experiment `async_eval`: what evaluation costs the training loop, synchronous vs asynchronous.

The baseline model (MNIST-5k CNN by default) trains three times for the same steps with the canonical
`fit`: without evaluation, with synchronous evaluation every `eval_every` steps, and with an
`AsyncEvaluator` that snapshots the params onto a device of its own and evaluates in a background
thread. Training speed is the rate at which `fit` asks for batches between its second and last step
(so compilation and the final evaluation are outside it, and in-loop evaluation is inside). Each
variant trains from scratch in a fresh sub-directory (`no_eval_<r>`, `sync_eval_<r>`, `async_eval_<r>`):
a rerun, or a run after SIGTERM, measures again instead of resuming.

Headline: `no_eval.steps_per_s`, `sync_eval.steps_per_s`, `async_eval.steps_per_s`, `async_overhead`
(1 - async / no_eval), `sync_overhead`, `eval_lag_steps` (median over evaluations of the training
steps taken between the snapshot and its result).

`--mode=eval_sidecar --workdir W` instead follows the checkpoints of the run training in W (for example
`python -m leanjax.experiments.baseline --workdir W`, same config) and evaluates each one once on its
own device (`leanjax.train.async_eval.follow_checkpoints`), writing `summary.eval_sidecar.json` beside
the run's own summary.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Evaluation gets a device of its own; the flag only touches the host CPU backend.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import bisect  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from leanjax import data  # noqa: E402
from leanjax.experiments import _launch  # noqa: E402
from leanjax.experiments._baseline import build  # noqa: E402  (`--audit` compiles the baseline model too)
from leanjax.state import TrainState  # noqa: E402
from leanjax.step import evaluate, make_eval_step, make_train_step  # noqa: E402
from leanjax.train import fit  # noqa: E402
from leanjax.train.async_eval import AsyncEvaluator, follow_checkpoints  # noqa: E402


class TimedBatches:
    """A batch iterator that records when each batch was asked for (and keeps grain's resumable state)."""

    def __init__(self, it):
        self._it, self.times = it, []

    def __iter__(self):
        return self

    def __next__(self):
        self.times.append(time.perf_counter())
        return next(self._it)

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)

    def steps_per_s(self) -> float:
        """Steps from the second request (the first step compiled and ran) to the last one."""
        t = self.times
        return (len(t) - 2) / (t[-1] - t[1]) if len(t) > 2 and t[-1] > t[1] else float("nan")

    def step_at(self, when: float) -> int:
        """The training step that was about to run at time `when`."""
        return bisect.bisect_right(self.times, when)


def _setup(config):
    parts = build(config)
    tx = parts.tx
    state = TrainState.create(parts.params, tx, jax.random.key(config.seed))
    eval_step = make_eval_step(parts.metrics)

    def eval_fn(params):
        batches = data.eval_batches(parts.eval, config.eval_batch_size)
        return evaluate(eval_step, params, itertools.islice(batches, config.eval_max_batches or None))

    return parts, tx, state, eval_fn


def _fresh(workdir, name):
    """An empty `workdir/name`: each variant is a measurement from scratch, never a resumed run."""
    path = os.path.join(workdir, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def _train(config, workdir, parts, step, state, **fit_kwargs):
    """One timed training run of `step` in a fresh `workdir`: `(batches, preempted)`."""
    batches = TimedBatches(data.batches(parts.train, batch_size=config.batch_size, seed=config.seed))
    state = jax.tree.map(lambda x: x.copy(), state)  # fit donates its state; every variant starts afresh
    result = fit(state, step, batches, num_steps=config.num_steps, workdir=workdir, checkpoint_every=0,
                 log_every=config.log_every, progress=False, **fit_kwargs)
    return batches, result.preempted


def run(config, workdir, mode="train"):
    if mode == "eval_sidecar":
        return sidecar(config, workdir)
    if mode != "train":
        raise _launch.ConfigError(f"--mode={mode}: use train or eval_sidecar")
    parts, tx, state, eval_fn = _setup(config)
    step = make_train_step(parts.loss, tx)  # one compiled step for every variant
    eval_device = jax.devices()[-1]  # training runs on the default device, jax.devices()[0]
    if jax.device_count() < 2:
        print("[async_eval] one device: evaluation shares the training device", flush=True)
    rates: dict[str, list[float]] = {"no_eval": [], "sync_eval": [], "async_eval": []}
    lags, latencies, evaluations, skipped = [], [], 0, 0
    for r in range(config.repeats):  # alternate the variants, so drift hits them alike
        b, preempted = _train(config, _fresh(workdir, f"no_eval_{r}"), parts, step, state)
        if preempted:  # SIGTERM: stop measuring (a rerun measures again from scratch)
            return {"preempted": True}, {}
        rates["no_eval"].append(b.steps_per_s())
        b, preempted = _train(config, _fresh(workdir, f"sync_eval_{r}"), parts, step, state, eval_fn=eval_fn,
                              eval_every=config.eval_every)
        if preempted:
            return {"preempted": True}, {}
        rates["sync_eval"].append(b.steps_per_s())
        sub = _fresh(workdir, f"async_eval_{r}")
        evaluator = AsyncEvaluator(eval_fn, workdir=sub, placement=eval_device, max_pending=config.max_pending)
        b, preempted = _train(config, sub, parts, step, state, eval_every=config.eval_every, **evaluator.fit_hooks())
        results = evaluator.close(wait=not preempted)
        if preempted:
            return {"preempted": True}, {}
        rates["async_eval"].append(b.steps_per_s())
        evaluations += len(results)
        skipped += len(evaluator.skipped)
        for e in results:
            latencies.append(e.latency_s)
            if e.step < config.num_steps:  # the final evaluation runs after training: no step to lag
                lags.append(b.step_at(e.finished_s) - e.step)
        final_async = results[-1].metrics if results else None
    rate = {k: statistics.median(v) for k, v in rates.items()}
    headline = {
        "no_eval.steps_per_s": rate["no_eval"],
        "sync_eval.steps_per_s": rate["sync_eval"],
        "async_eval.steps_per_s": rate["async_eval"],
        "async_overhead": 1.0 - rate["async_eval"] / rate["no_eval"],
        "sync_overhead": 1.0 - rate["sync_eval"] / rate["no_eval"],
        "eval_lag_steps": statistics.median(lags) if lags else float("nan"),
    }
    metrics = {"rates": rates, "eval_latency_s": statistics.median(latencies) if latencies else None,
               "async_evaluations": evaluations, "async_skipped": skipped, "final_async_eval": final_async,
               "devices": jax.device_count(), "eval_device": str(eval_device)}
    return metrics, headline


def sidecar(config, workdir):
    """Follow the run in `workdir` (the launcher writes `summary.eval_sidecar.json` beside the run's own
    summary): what was evaluated, and the newest result as the headline."""
    parts, tx, state, eval_fn = _setup(config)
    template = jax.device_put(state, jax.devices()[-1])  # the sidecar's own device
    target = config.sidecar.stop_at_accuracy

    def on_result(step, metrics):
        return bool(target) and metrics.get("accuracy", 0.0) >= target

    report = follow_checkpoints(workdir, template, eval_fn, poll_s=config.sidecar.poll_s, on_result=on_result,
                                idle_timeout_s=config.sidecar.idle_timeout_s or None)
    metrics = {"evaluated": report.evaluated, "skipped": report.skipped, "stopped_run": report.stopped_run,
               "results": {str(k): v for k, v in report.results.items()}}
    last = max(report.results) if report.results else None
    headline = {"eval_step": last, **{f"eval_{k}": v for k, v in report.results[last].items()}} \
        if last is not None else {}
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("async_eval", run))

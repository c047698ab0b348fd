"""Asynchronous evaluation: the in-process AsyncEvaluator through `fit`, and the checkpoint sidecar
(every checkpoint evaluated exactly once while the trainer rotates old ones out)."""

import json
import shutil
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leanjax.state import TrainState
from leanjax.train import Checkpointer, fit, read_jsonl
from leanjax.train.async_eval import AsyncEvaluator, committed_steps, follow_checkpoints, pin, request_stop


class Counter:
    """A resumable iterator of dummy batches."""

    def __init__(self):
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return {"x": np.ones((2,), np.float32)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def _state(w=0.0):
    return TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.full((4,), w, jnp.float32)},
                      opt_state=(), rng=jnp.zeros((2,), jnp.uint32))


def _add_one(state, batch):  # params after step s hold s (x is ones)
    new = state.replace(step=state.step + 1, params={"w": state.params["w"] + batch["x"].mean()})
    return new, {"loss": jnp.float32(1.0)}


_step = jax.jit(_add_one, donate_argnums=(0,))  # donated, like leanjax's train steps


@pytest.mark.parametrize("device", [-1, 0])  # a device of its own, or the training device itself
def test_async_evaluator_tags_results_with_their_step_and_survives_donation(tmp_path, device):
    seen_threads = set()

    def slow_eval(params):
        seen_threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return {"w": float(params["w"][0]), "device": float(list(params["w"].devices())[0].id)}

    evaluator = AsyncEvaluator(slow_eval, workdir=tmp_path, placement=jax.devices()[device], max_pending=8)
    result = fit(_state(), _step, Counter(), num_steps=6, workdir=str(tmp_path), eval_every=2, log_every=2,
                 progress=False, **evaluator.fit_hooks())
    results = evaluator.close()
    assert [r.step for r in results] == [2, 4, 6]
    # Each result measured the params of its own step, although the train step donated them right after.
    assert [r.metrics["w"] for r in results] == [2.0, 4.0, 6.0]
    assert all(r.metrics["device"] == jax.devices()[device].id for r in results)
    assert all(name.startswith("leanjax-eval") for name in seen_threads)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if any(k.startswith("eval_") for k in r)]
    assert [(r["step"], r["eval_w"]) for r in rows] == [(2, 2.0), (4, 4.0), (6, 6.0)]  # fit wrote no empty rows
    assert float(result.state.params["w"][0]) == 6.0


def test_async_evaluator_drops_the_oldest_waiting_snapshot_and_stops_the_run():
    started, gate = threading.Event(), threading.Event()

    def blocked_eval(params):
        started.set()
        gate.wait(10)
        return {"w": float(params["w"][0])}

    evaluator = AsyncEvaluator(blocked_eval, max_pending=1, stop_fn=lambda step, m: m["w"] >= 2.0)
    evaluator.submit({"w": jnp.full((2,), 2.0)}, step=2)
    assert started.wait(10)  # step 2 is being evaluated (and blocked)
    for step in (4, 6):  # 4 waits, then 6 replaces it
        evaluator.submit({"w": jnp.full((2,), float(step))}, step=step)
    assert evaluator.skipped == [4] and not evaluator.stop_requested
    gate.set()
    results = evaluator.close()
    assert [(r.step, r.metrics["w"]) for r in results] == [(2, 2.0), (6, 6.0)] and evaluator.stop_requested

    failing = AsyncEvaluator(lambda p: 1 / 0)
    failing.submit({"w": jnp.zeros(2)}, step=1)
    with pytest.raises(RuntimeError, match="asynchronous evaluation failed"):
        failing.close()
    with pytest.raises(ValueError, match="max_pending"):
        AsyncEvaluator(lambda p: {}, max_pending=0)


def test_stop_file_stops_fit_without_evaluation(tmp_path):
    request_stop(tmp_path, "the sidecar says so")
    result = fit(_state(), _step, Counter(), num_steps=20, workdir=str(tmp_path), log_every=5, progress=False)
    assert int(result.state.step) == 5


def test_pin_survives_deletion_and_reports_a_vanished_source(tmp_path):
    src = tmp_path / "ckpt" / "7"
    (src / "state").mkdir(parents=True)
    (src / "state" / "data").write_bytes(b"weights")
    assert pin(str(src), str(tmp_path / "pinned" / "7"))
    shutil.rmtree(src)  # the trainer rotates it out
    assert (tmp_path / "pinned" / "7" / "state" / "data").read_bytes() == b"weights"
    assert not pin(str(tmp_path / "ckpt" / "8"), str(tmp_path / "pinned" / "8"))
    assert not (tmp_path / "pinned" / "8").exists()
    assert committed_steps(tmp_path / "pinned") == [7]


def test_sidecar_evaluates_every_checkpoint_once_while_the_trainer_deletes_old_ones(tmp_path):
    steps = list(range(1, 6))

    def trainer():
        ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
        for s in steps:
            ckpt.save(s, _state(float(s)), {"i": s})
            time.sleep(0.1)
        ckpt.close()
        (tmp_path / "summary.json").write_text("{}")

    calls = []

    def slow_eval(params):  # slower than the trainer saves: rotation happens while evaluating
        calls.append(float(params["w"][0]))
        time.sleep(0.25)
        return {"w": float(params["w"][0])}

    thread = threading.Thread(target=trainer)
    thread.start()
    template = jax.device_put(_state(), jax.devices()[-1])
    report = follow_checkpoints(tmp_path, template, slow_eval, poll_s=0.02, idle_timeout_s=60, verbose=False)
    thread.join()
    assert report.evaluated == steps and report.skipped == []
    assert calls == [float(s) for s in steps]  # each exactly once, with its own params
    assert len(committed_steps(tmp_path / "checkpoints")) == 2  # the trainer did delete the others
    rows = [(r["step"], r["eval_w"]) for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert rows == [(s, float(s)) for s in steps]
    assert committed_steps(tmp_path / "eval_sidecar" / "pinned") == []

    # A restarted sidecar does not evaluate anything again.
    again = follow_checkpoints(tmp_path, template, slow_eval, poll_s=0.02, idle_timeout_s=5, verbose=False)
    assert again.results == {} and len(calls) == len(steps)
    with open(tmp_path / "eval_sidecar" / "state.json") as f:
        assert json.load(f)["evaluated"] == steps


def test_sidecar_requests_an_early_stop(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=5, async_save=False)
    for s in (1, 2, 3):
        ckpt.save(s, _state(float(s)))
    ckpt.close()
    report = follow_checkpoints(tmp_path, _state(), lambda p: {"w": float(p["w"][0])}, poll_s=0.01,
                                on_result=lambda step, m: m["w"] >= 2.0, idle_timeout_s=5, verbose=False)
    assert report.stopped_run and report.evaluated == [1, 2]
    assert "step 2" in (tmp_path / "STOP").read_text()

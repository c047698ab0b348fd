"""End to end: the baseline experiment's command, killed with SIGKILL mid-way and restarted.

The restarted run must end bitwise equal (final params and the metrics log) to an uninterrupted one;
a workdir holding another model's checkpoint and a diverging run must fail with a clear message.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest

from leanjax.train import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CMD = [sys.executable, "-m", "leanjax.experiments.baseline", "--config", "configs/baseline/default.py:tiny",
       "--config.num_steps=60", "--config.checkpoint_every=10", "--config.eval_every=30",
       "--config.log_every=10"]


def _run(workdir, *extra, check=True):
    proc = subprocess.run(CMD + ["--workdir", str(workdir), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _final_params(workdir):
    ckpt = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    return ocp.StandardCheckpointer().restore(ckpt / str(last) / "state")["params"], last


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    _run(workdir)
    return workdir


def test_tiny_summary_has_headline_keys(straight):
    summary = json.loads((straight / "summary.json").read_text())
    assert set(summary["headline"]) == {"eval_accuracy", "steps_per_s", "compile_s", "params"}
    assert 0.3 < summary["headline"]["eval_accuracy"] <= 1.0  # 60 steps of a tiny CNN: well above chance
    assert (straight / "curves.png").stat().st_size > 1000


def test_sigkill_then_rerun_is_bitwise_equal(straight, tmp_path):
    proc = subprocess.Popen(CMD + ["--workdir", str(tmp_path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first_ckpt = tmp_path / "checkpoints" / "10"
    deadline = time.time() + 300
    while not first_ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "summary.json").exists()

    resumed = _run(tmp_path)
    assert "resumed from checkpoint at step" in resumed.stdout
    params_a, step_a = _final_params(straight)
    params_b, step_b = _final_params(tmp_path)
    assert step_a == step_b == 60
    chex.assert_trees_all_equal(params_a, params_b)
    assert read_jsonl(straight / "metrics.jsonl") == read_jsonl(tmp_path / "metrics.jsonl")


def test_restart_after_the_final_checkpoint_writes_the_same_summary(straight, tmp_path):
    """Killed after its final checkpoint (before summary.json): the rerun trains nothing and writes the summary
    the uninterrupted run wrote (its speed from fit_stats.json, its final loss and evaluation from the log)."""
    import shutil

    shutil.copytree(straight, tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    rerun = _run(tmp_path / "run")
    assert "resumed from checkpoint at step 60" in rerun.stdout
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, tmp_path / "run"))
    assert a["headline"] == b["headline"] and a["config"] == b["config"]
    assert a["metrics"]["final_train_loss"] is not None
    assert b["metrics"].pop("resumed_from_step") == 60 and a["metrics"].pop("resumed_from_step") == 0
    assert a["metrics"] == b["metrics"]
    assert read_jsonl(straight / "metrics.jsonl") == read_jsonl(tmp_path / "run" / "metrics.jsonl")


def test_incompatible_checkpoint_is_a_clear_error(straight, tmp_path):
    import shutil

    shutil.copytree(straight / "checkpoints", tmp_path / "checkpoints")
    proc = _run(tmp_path, "--config.cnn.dense=16", check=False)
    assert proc.returncode == 1
    assert "does not match this run" in proc.stderr
    assert "params/hidden/kernel: checkpoint (784, 32) float32, model (784, 16) float32" in proc.stderr


def test_diverging_run_stops_naming_the_step(tmp_path):
    proc = _run(tmp_path, "--config.learning_rate=1e30", "--config.warmup_steps=0", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "error: loss is nan at step" in proc.stderr
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows and not np.isfinite(float(rows[-1]["loss"]))

"""End to end: `python -m leanjax.experiments.async_eval --config configs/async_eval/default.py:tiny`, and
its `--mode=eval_sidecar` following a finished baseline run."""

import json
import math

import pytest

from leanjax.experiments import _launch, async_eval, baseline
from leanjax.train import read_jsonl

KEYS = {"no_eval.steps_per_s", "sync_eval.steps_per_s", "async_eval.steps_per_s", "async_overhead",
        "sync_overhead", "eval_lag_steps"}


@pytest.mark.slow  # three short training runs of the tiny CNN
def test_async_eval_tiny_writes_every_headline_key(tmp_path):
    argv = ["--config", "configs/async_eval/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("async_eval", async_eval.run, argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    h, m = summary["headline"], summary["metrics"]
    assert set(h) == KEYS
    assert all(math.isfinite(h[k]) for k in KEYS - {"eval_lag_steps"})
    # Eval points 10, 20, 30: each evaluated or (when evaluation was behind) dropped, the final one never.
    rows = [r["step"] for r in read_jsonl(tmp_path / "async_eval_0" / "metrics.jsonl") if "eval_accuracy" in r]
    assert rows == sorted(set(rows)) and set(rows) <= {10, 20, 30} and rows[-1] == 30
    assert m["async_evaluations"] == len(rows) and m["async_evaluations"] + m["async_skipped"] == 3


@pytest.mark.slow
def test_sidecar_mode_follows_a_baseline_run(tmp_path):
    config = ["--config", "configs/baseline/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("baseline", baseline.run, config) == 0
    argv = ["--config", "configs/async_eval/default.py:tiny", "--workdir", str(tmp_path), "--mode", "eval_sidecar"]
    assert _launch.main("async_eval", async_eval.run, argv) == 0
    trainer = json.loads((tmp_path / "summary.json").read_text())
    assert trainer["experiment"] == "baseline"  # the sidecar leaves the run's own summary alone
    sidecar = json.loads((tmp_path / "summary.eval_sidecar.json").read_text())
    # The baseline keeps its newest 3 checkpoints (30 and 60 with checkpoint_every=30).
    assert sidecar["metrics"]["evaluated"] == [30, 60] and sidecar["metrics"]["skipped"] == []
    assert sidecar["headline"]["eval_step"] == 60 and "eval_accuracy" in sidecar["headline"]

"""End to end: `python -m leanjax.experiments.parallel --config configs/parallel/default.py:tiny`."""

import json

import pytest

from leanjax.experiments import _launch, parallel

KEYS = {"planner.mesh", "planner.step_time_s", "best.mesh", "best.step_time_s", "planner_regret",
        "planner.memory_per_device"}


@pytest.mark.slow  # two meshes compiled and timed: ~1-2 min on 2 loaded cores
def test_parallel_tiny_writes_every_headline_key(tmp_path):
    argv = ["--config", "configs/parallel/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("parallel", parallel.run, argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    h = summary["headline"]
    assert set(h) == KEYS
    sweep = summary["metrics"]["exhaustive_step_time_s"]
    assert len(sweep) == 2 and h["best.step_time_s"] == min(sweep.values())
    assert h["planner_regret"] == pytest.approx(h["planner.step_time_s"] / h["best.step_time_s"] - 1)
    assert h["planner.memory_per_device"] > 0
    assert (tmp_path / "mesh_plans.json").exists()

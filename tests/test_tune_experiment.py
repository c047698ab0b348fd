"""End to end: the `tune` experiment's :tiny config writes every headline key, and rerunning it in the
same workdir resumes the finished studies instead of repeating their trials."""

import json

import pytest

from leanjax.experiments import _launch, tune

HEADLINE = {"random.best", "tpe.best", "tpe_hyperband.best", "tpe_hyperband.compute_to_target",
            "random.compute_to_target", "speedup_vs_random", "population.speedup", "population.n"}


@pytest.mark.slow  # ~75 s of CPU: 3 studies x 4 trials, then the population benchmark on the same compiled steps
def test_tiny_writes_every_headline_key(tmp_path):
    argv = ["--config", "configs/tune/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("tune", tune.run, argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    head = summary["headline"]
    assert set(head) == HEADLINE
    assert 0.1 < head["random.best"] <= 1.0 and head["population.n"] == 4
    assert head["population.speedup"] > 0 and head["speedup_vs_random"] > 0
    small = summary["metrics"]["population"]["small"]
    assert small["max_abs_metric_diff"] < 1e-3  # vmapped members score as their sequential twins
    assert (tmp_path / "history.png").stat().st_size < 200_000

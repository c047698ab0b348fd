"""The `fusion` experiment end to end on its tiny variant (torch optional: NaN ratios without it)."""

import importlib.util
import json
import math

import pytest


@pytest.mark.slow  # ~1 min of CPU; several minutes of wall time on 2 shared cores
def test_tiny_experiment_writes_every_headline_key(tmp_path):
    from leanjax.experiments import _launch, fusion

    argv = ["--config", "configs/fusion/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("fusion", fusion.run, argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    headline, metrics = summary["headline"], summary["metrics"]
    assert set(headline) == {"jit_speedup", "fusions", "bytes_ratio", "mfu", "torch_eager.throughput_ratio",
                             "torch_compile.throughput_ratio"}
    assert headline["jit_speedup"] > 1 and headline["fusions"] > 0 and 0 < headline["bytes_ratio"] < 1
    assert 0 < headline["mfu"] < 1
    assert math.isnan(headline["torch_compile.throughput_ratio"])  # disabled in :tiny
    assert "config.torch_compile=False" in metrics["torch_missing"]["torch_compile"]
    if importlib.util.find_spec("torch") is None:
        assert math.isnan(headline["torch_eager.throughput_ratio"])
        assert "not installed" in metrics["torch_missing"]["torch_eager"]
    else:  # the step-0 losses matched (the run asserts it) and the eager side was timed
        assert headline["torch_eager.throughput_ratio"] > 0

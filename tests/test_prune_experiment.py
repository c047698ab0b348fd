"""End to end: `prune:tiny` (CNN and a 1-layer MiniLM) writes every headline key."""

import json

import pytest

from leanjax.experiments import _launch
from leanjax.experiments.prune import run

ARMS = ("dense_accuracy", "s50.accuracy", "s75.accuracy", "s90.accuracy", "nm24.accuracy",
        "structured50.accuracy", "structured50.size_ratio", "structured50.throughput_ratio", "nm24.size_ratio")


@pytest.mark.slow
def test_prune_tiny(tmp_path):
    code = _launch.main("prune", run, ["--config", "configs/prune/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    headline = json.loads((tmp_path / "summary.json").read_text())["headline"]
    long_arms = {f"minilm.{a}.accuracy" for a in ("long_dense", "gradual", "gradual_kd", "movement")}
    assert set(headline) == {f"{m}.{k}" for m in ("cnn", "minilm") for k in ARMS} | long_arms
    assert 0 < headline["cnn.nm24.size_ratio"] < 1 and 0 < headline["cnn.structured50.size_ratio"] < 1


def test_unknown_long_arm_is_a_config_error_naming_the_key():
    import ml_collections

    from leanjax.experiments.prune import _long_arms

    c = ml_collections.ConfigDict(dict(long_learning_rate=1e-4, long_steps=4, long_ramp_fraction=0.5,
                                       long_sparsity=0.75, update_every=1, long_arms=("gradual", "movment")))
    with pytest.raises(_launch.ConfigError, match=r"long_arms: unknown \['movment'\]"):
        _long_arms("minilm", {"unstructured": r".*kernel"}, c, "/nonexistent", None, {})

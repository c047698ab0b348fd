"""leanjax.train.stages: the resumable stage runner and restoring a finished run without `fit`."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from leanjax.state import TrainState
from leanjax.train import fit
from leanjax.train.stages import Stage, restore_params, run_stages, write_json_atomic


def test_finished_stages_are_loaded_not_rerun_and_a_failed_one_is_redone(tmp_path):
    calls = []
    scratch = tmp_path / "b_scratch"

    def stage_a():
        calls.append("a")
        return {"x": np.float32(1.5), "arr": np.arange(2), "nan": float("nan")}

    def failing():
        calls.append("b")
        (scratch / "half.txt").write_text("half done")
        raise RuntimeError("killed")

    def stage_b(results):
        calls.append("b")
        assert not (scratch / "half.txt").exists()  # the unfinished attempt's scratch was emptied
        return {"y": results["a"]["x"] * 2}

    results = {}
    with pytest.raises(RuntimeError, match="killed"):
        run_stages([Stage("a", "first", stage_a), Stage("b", "second", failing, str(scratch))], str(tmp_path / "st"),
                   results, log=lambda s: None)
    assert sorted(os.listdir(tmp_path / "st")) == ["a.json"]  # no partial file of b
    assert results["a"]["arr"] == [0, 1] and results["a"]["nan"] is None  # as a rerun reads it back
    os.makedirs(scratch, exist_ok=True)
    lines = []
    results = {}
    run_stages([Stage("a", "first", stage_a), Stage("b", "second", lambda: stage_b(results), str(scratch))],
               str(tmp_path / "st"), results, log=lines.append)
    assert calls == ["a", "b", "b"]  # a ran once; b again after its failure
    assert results["b"]["y"] == 3.0 and results["a"]["wall_s"] >= 0
    assert "done earlier" in lines[0]
    with pytest.raises(ValueError, match="unique"):
        run_stages([Stage("a", "", dict), Stage("a", "", dict)], str(tmp_path / "x"), {})


def test_write_json_atomic_replaces_whole_file(tmp_path):
    path = str(tmp_path / "r.json")
    write_json_atomic(path, {"v": 1})
    write_json_atomic(path, {"v": 2, "inf": float("inf")})
    with open(path) as f:
        assert json.load(f) == {"v": 2, "inf": None}
    assert os.listdir(tmp_path) == ["r.json"]


def test_restore_params_reads_the_checkpoint_without_fit(tmp_path, capsys):
    params = {"w": jnp.ones((3,))}
    tx = optax.sgd(0.1)
    loss_step = jax.jit(lambda s, b: (s.replace(params={"w": s.params["w"] - b}, step=s.step + 1), {"loss": 0.0}))

    class Batches:
        def __init__(self):
            self.i = 0

        def __next__(self):
            self.i += 1
            return jnp.float32(self.i)

        def get_state(self):
            return {"i": self.i}

        def set_state(self, s):
            self.i = s["i"]

    start = TrainState.create(params, tx, jax.random.key(0))
    fit(start, loss_step, Batches(), num_steps=4, workdir=str(tmp_path), checkpoint_every=2, progress=False,
        keep_checkpoints=5)
    capsys.readouterr()
    at2 = restore_params(str(tmp_path), start, 2)
    at4 = restore_params(str(tmp_path), start, 4)
    np.testing.assert_allclose(at2["w"], 1 - (1 + 2))
    np.testing.assert_allclose(at4["w"], 1 - (1 + 2 + 3 + 4))
    assert "resumed from checkpoint" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="step 3"):
        restore_params(str(tmp_path), start, 3)

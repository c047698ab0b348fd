"""The `auto` remat policy (leanjax.audit.remat_auto) and the `remat` experiment end to end."""

import json

import jax
import jax.numpy as jnp
import pytest

from leanjax.audit import remat_auto
from leanjax.audit.remat_auto import Candidate, NoPolicyFits
from leanjax.models import checkpoint_policy

MIB = 2**20
WIDTH, LAYERS = 64, 4


def test_pick_takes_the_fastest_policy_that_fits_and_says_why():
    table = [Candidate("none", None, 100 * MIB, 1e9, 1.0), Candidate("dots", None, 60 * MIB, 1.1e9, 1.1),
             Candidate("nothing", None, 30 * MIB, 1.3e9, 1.3)]
    choice = remat_auto.pick(table, budget_bytes=70 * MIB)  # between dots and none
    assert (choice.policy, choice.peak_bytes, choice.step_time_s) == ("dots", 60 * MIB, 1.1)
    assert "'dots'" in choice.reason and "fastest" in choice.reason
    assert "over budget: 'none' 100.0 MiB" in choice.reason
    assert choice.table == tuple(table)


def test_pick_untimed_ranks_by_compiled_flops():
    table = [Candidate("dots", None, 60 * MIB, 1.1e9), Candidate("nothing", None, 30 * MIB, 1.3e9)]
    choice = remat_auto.pick(table, budget_bytes=200 * MIB)
    assert choice.policy == "dots" and "fewest compiled FLOPs" in choice.reason


def test_pick_with_batches_maximises_throughput():
    table = [Candidate("none", 8, 90 * MIB, 1e9, 1.0), Candidate("nothing", 32, 90 * MIB, 5e9, 3.0)]
    assert remat_auto.pick(table, budget_bytes=100 * MIB).policy == "nothing"  # 10.7 vs 8 examples/s


def test_impossible_budget_is_a_clear_error():
    table = [Candidate("none", None, 100 * MIB, 1e9, 1.0), Candidate("nothing", None, 30 * MIB, 1.3e9, 1.3)]
    with pytest.raises(NoPolicyFits, match=r"smallest compiled peak is 'nothing' with 30.0 MiB"):
        remat_auto.pick(table, budget_bytes=10 * MIB)
    with pytest.raises(ValueError, match="unknown remat policy 'some'"):
        remat_auto.choose_remat(lambda p, b: None, ["some"], MIB)


def _build_step(policy, batch):
    """A scanned stack of checkpointed tanh layers: remat bounds its activation memory on CPU too."""
    remat = checkpoint_policy(policy)

    def block(h, w):
        return jnp.tanh(h @ w), None

    body = block if remat is None else jax.checkpoint(block, policy=remat)

    def loss(ws, x):
        return jnp.mean(jax.lax.scan(body, x, ws)[0] ** 2)

    ws = jnp.full((LAYERS, WIDTH, WIDTH), 0.01)
    x = jax.ShapeDtypeStruct((batch or 64, WIDTH), jnp.float32) if batch else jnp.ones((64, WIDTH))
    return jax.jit(jax.grad(loss)), (ws, x)


def test_choose_remat_compiles_times_and_picks_within_budget():
    none, nothing = remat_auto.measure(_build_step, ["none", "nothing"], timing=False)
    assert nothing.peak_bytes < none.peak_bytes
    budget = (none.peak_bytes + nothing.peak_bytes) // 2
    choice = remat_auto.choose_remat(_build_step, ["none", "nothing"], budget, rounds=2)
    assert choice.policy == "nothing" and choice.step_time_s > 0
    assert "over budget: 'none'" in choice.reason


def test_max_batch_is_the_largest_batch_that_fits():
    peak = lambda b: remat_auto.measure(_build_step, ["nothing"], b, timing=False)[0].peak_bytes  # noqa: E731
    budget = peak(40)
    fit = remat_auto.max_batch(_build_step, "nothing", budget, start=8, limit=256, multiple_of=8)
    assert fit.batch % 8 == 0 and fit.peak_bytes <= budget < peak(fit.batch + 8)
    assert fit.batch >= 40
    with pytest.raises(NoPolicyFits, match="even batch 8"):
        remat_auto.max_batch(_build_step, "nothing", 1024, start=16, multiple_of=8)


@pytest.mark.slow  # ~1 min of CPU; several minutes of wall time on 2 shared cores
def test_tiny_experiment_writes_every_headline_key(tmp_path):
    from leanjax.experiments import _launch, remat

    argv = ["--config", "configs/remat/default.py:tiny", "--workdir", str(tmp_path)]
    assert _launch.main("remat", remat.run, argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == {f"{p}.{k}" for p in ("none", "dots", "nothing", "names", "segment")
                                        for k in ("memory_ratio", "step_time_ratio")} | {
        "auto.policy", "auto.max_batch_ratio", "bound.nothing_memory_ratio", "depth.nothing_memory_ratio"}
    headline = summary["headline"]
    assert headline["none.memory_ratio"] == 1.0 and headline["nothing.memory_ratio"] < 1.0
    assert headline["auto.max_batch_ratio"] >= 1.0
    assert headline["auto.policy"] in summary["metrics"]["auto"]["reason"]
    # The bound is below what `nothing` reaches (it removes saved block inputs) and above zero.
    assert 0 < headline["bound.nothing_memory_ratio"] <= headline["nothing.memory_ratio"]
    assert summary["metrics"]["depth_trend"][0]["num_layers"] == 4

"""Per-example scores: equal to a direct computation, kept by id inside the jitted step, resume-safe."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leanjax.data import ArraySource, batches
from leanjax.data.scores import (
    ScoredState,
    ScoreStore,
    example_scores,
    indexed,
    score_source,
    scored_classification_loss,
    with_scores,
)
from leanjax.models import MLP, functional
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import fit


def _direct(logits, labels):
    """Plain numpy, one example at a time."""
    out = {k: [] for k in ("loss", "el2n", "margin", "correct")}
    for z, y in zip(np.asarray(logits, np.float64), np.asarray(labels)):
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        out["loss"].append(-np.log(p[y]))
        out["el2n"].append(np.linalg.norm(p - np.eye(len(z))[y]))
        out["margin"].append(z[y] - np.delete(z, y).max())
        out["correct"].append(float(np.argmax(z) == y))
    return {k: np.array(v) for k, v in out.items()}


def test_scores_equal_direct_per_example_computation():
    logits = jax.random.normal(jax.random.key(0), (16, 5)) * 3
    labels = jax.random.randint(jax.random.key(1), (16,), 0, 5)
    got = example_scores(logits, labels)
    want = _direct(logits, labels)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert want["correct"].min() == 0 and want["margin"].min() < 0 < want["margin"].max()


def test_sequence_scores_average_over_positions():
    logits = jax.random.normal(jax.random.key(2), (3, 4, 7))
    labels = jax.random.randint(jax.random.key(3), (3, 4), 0, 7)
    got = example_scores(logits, labels)
    flat = _direct(logits.reshape(12, 7), labels.reshape(12))
    for k in flat:
        np.testing.assert_allclose(got[k], flat[k].reshape(3, 4).mean(1), rtol=1e-5, atol=1e-6)


def test_store_scatters_by_id_counts_forgetting_and_ignores_padding():
    store = ScoreStore.create(5)
    ones = jnp.ones(2)
    s = {"loss": jnp.array([1.0, 2.0]), "el2n": jnp.array([0.5, 1.0]), "margin": ones, "correct": ones}
    store = store.update(jnp.array([3, 1]), s, momentum=0.5)
    np.testing.assert_array_equal(store.loss, [0, 2, 0, 1, 0])
    np.testing.assert_array_equal(store.visits, [0, 1, 0, 1, 0])
    wrong = {"loss": jnp.array([3.0, 9.0]), "el2n": jnp.array([1.5, 9.0]), "margin": -ones,
             "correct": jnp.zeros(2)}
    store = store.update(jnp.array([3, 0]), wrong, momentum=0.5, mask=jnp.array([True, False]))
    np.testing.assert_array_equal(store.forgetting, [0, 0, 0, 1, 0])  # 3 went correct -> wrong
    np.testing.assert_array_equal(store.visits, [0, 1, 0, 2, 0])      # the padded row changed nothing
    np.testing.assert_allclose(store.el2n_avg[3], 0.5 * 0.5 + 0.5 * 1.5)


def _mlp_setup(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    apply_fn, params = functional(MLP(6, (16,), 3, rngs=nnx.Rngs(seed)))
    return ArraySource({"image": x, "label": y}), apply_fn, params


def test_step_stores_the_scores_of_the_batch_it_trained_on():
    source, apply_fn, params = _mlp_setup()
    tx = optax.sgd(0.1)
    step = with_scores(make_train_step(scored_classification_loss(apply_fn), tx, jit=False), donate=False)
    state = ScoredState(TrainState.create(params, tx, jax.random.key(0)), ScoreStore.create(len(source)))
    batch = next(batches(indexed(source), batch_size=8, seed=0))
    new, metrics = step(state, batch)
    want = example_scores(apply_fn(params, batch["image"]), batch["label"])  # pre-update params
    for k in want:
        np.testing.assert_allclose(np.asarray(getattr(new.scores, k))[batch["index"]], want[k], rtol=1e-5)
    assert int(new.scores.visits.sum()) == 8 and "per_example" not in metrics and "score_el2n" in metrics


def test_score_store_survives_resume(tmp_path):
    source, apply_fn, params = _mlp_setup()
    tx = optax.adam(1e-2)
    step = with_scores(make_train_step(scored_classification_loss(apply_fn), tx, jit=False))

    def run(workdir, num_steps):
        fresh = jax.tree.map(jnp.copy, params)  # the step donates the state: each run needs its own buffers
        state = ScoredState(TrainState.create(fresh, tx, jax.random.key(0)), ScoreStore.create(len(source)))
        it = batches(indexed(source), batch_size=8, seed=1)
        return fit(state, step, it, num_steps=num_steps, workdir=str(workdir), checkpoint_every=5,
                   log_every=5, progress=False).state

    straight = run(tmp_path / "a", 20)
    run(tmp_path / "b", 10)
    resumed = run(tmp_path / "b", 20)  # restores the step-10 checkpoint: params and scores
    assert int(straight.scores.visits.sum()) == 160
    chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(straight))


def test_score_source_matches_per_example_logits():
    source, apply_fn, params = _mlp_setup(n=21)
    scores = score_source(lambda p, b: apply_fn(p, b["image"]), params, source, batch_size=8)
    want = _direct(apply_fn(params, source.arrays["image"]), source.arrays["label"])
    assert scores["loss"].shape == (21,)
    for k in want:
        np.testing.assert_allclose(scores[k], want[k], rtol=1e-5, atol=1e-6)


def test_missing_index_is_a_clear_error():
    source, apply_fn, params = _mlp_setup()
    tx = optax.sgd(0.1)
    step = with_scores(make_train_step(scored_classification_loss(apply_fn), tx, jit=False))
    state = ScoredState(TrainState.create(params, tx, jax.random.key(0)), ScoreStore.create(len(source)))
    with pytest.raises(KeyError, match="indexed"):
        step(state, next(batches(source, batch_size=8, seed=0)))

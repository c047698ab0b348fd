"""The train step: one compile, trainable mask, gradient accumulation, eval metrics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from leanjax import losses
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.trees import combine, partition


def _linear(params, x, dropout_rng=None):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _problem(seed=0, n=32):
    k = jax.random.split(jax.random.key(seed), 4)
    params = {"w1": jax.random.normal(k[0], (6, 8)) * 0.3, "b1": jnp.zeros(8),
              "w2": jax.random.normal(k[1], (8, 3)) * 0.3}
    batch = {"image": jax.random.normal(k[2], (n, 6)), "label": jax.random.randint(k[3], (n,), 0, 3)}
    return params, batch


def test_second_call_does_not_recompile():
    params, batch = _problem()
    tx = make_optimizer("adamw", learning_rate=1e-2, total_steps=10)
    step = make_train_step(losses.classification_loss(_linear), tx)
    state = TrainState.create(params, tx, jax.random.key(0))
    state, _ = step(state, batch)
    state, _ = step(state, batch)
    assert step._cache_size() == 1
    assert int(state.step) == 2


def test_step_matches_hand_written_adam_update():
    params, batch = _problem()
    tx = optax.adam(1e-2)
    loss_fn = losses.classification_loss(_linear)
    state = TrainState.create(params, tx, jax.random.key(0))
    new_state, metrics = make_train_step(loss_fn, tx, donate=False)(state, batch)
    grads = jax.grad(lambda p: loss_fn(p, batch, None)[0])(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(new_state.params, optax.apply_updates(params, updates), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss_fn(params, batch, None)[0], rtol=1e-6)


def test_frozen_leaves_get_no_optimizer_state_and_do_not_move():
    params, batch = _problem()
    mask = {"w1": False, "b1": False, "w2": True}
    tx = optax.adam(1e-2)
    state = TrainState.create(params, tx, jax.random.key(0), trainable=mask)
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == [(8, 3), (8, 3)]  # mu and nu of w2 only
    step = make_train_step(losses.classification_loss(_linear), tx, trainable=mask, donate=False)
    new_state, _ = step(state, batch)
    np.testing.assert_array_equal(new_state.params["w1"], params["w1"])
    assert not np.allclose(new_state.params["w2"], params["w2"])


def test_partition_combine_round_trip_and_bad_mask():
    params, _ = _problem()
    mask = {"w1": True, "b1": False, "w2": True}
    t, f = partition(params, mask)
    assert t["b1"] is None and f["w1"] is None
    chex.assert_trees_all_equal(combine(t, f), params)
    with pytest.raises(ValueError, match="trainable mask does not match"):
        partition(params, {"w1": True})


def test_gradient_accumulation_equals_full_batch():
    params, batch = _problem(n=32)
    tx = optax.sgd(0.1)
    loss_fn = losses.classification_loss(_linear)
    full = make_train_step(loss_fn, tx, donate=False)(TrainState.create(params, tx, jax.random.key(0)), batch)[0]
    accum_step = make_train_step(loss_fn, tx, grad_accum_steps=4, donate=False)
    accum = accum_step(TrainState.create(params, tx, jax.random.key(0)), batch)[0]
    chex.assert_trees_all_close(full.params, accum.params, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not divisible"):
        make_train_step(loss_fn, tx, grad_accum_steps=5)(TrainState.create(params, tx, jax.random.key(0)), batch)


def test_eval_masks_padding_and_merges_batches():
    params, batch = _problem(n=12)
    metrics_fn = losses.classification_metrics(_linear)
    eval_step = make_eval_step(metrics_fn)
    per = metrics_fn(params, batch)
    halves = [{k: v[:8] for k, v in batch.items()},
              {**{k: jnp.concatenate([v[8:], v[:4]]) for k, v in batch.items()},
               "mask": jnp.array([True] * 4 + [False] * 4)}]
    halves[0]["mask"] = jnp.ones(8, bool)
    got = evaluate(eval_step, params, halves)
    np.testing.assert_allclose(got["loss"], float(per["loss"].mean()), rtol=1e-6)
    np.testing.assert_allclose(got["accuracy"], float(per["accuracy"].mean()), rtol=1e-6)


def test_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adagrad").init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="unknown schedule"):
        make_optimizer("adam", schedule="step")


def test_adafactor_keeps_factored_state_and_matches_optax():
    """Adafactor's state for a [256, 128] matrix is its row and column second moments (384 numbers, vs
    Adam's 65,536), and one step equals optax's adafactor with an absolute rate."""
    w = jax.random.normal(jax.random.key(0), (256, 128))
    grads = {"w": jax.random.normal(jax.random.key(1), (256, 128)), "b": jnp.ones(128)}
    params = {"w": w, "b": jnp.zeros(128)}
    tx = make_optimizer("adafactor", learning_rate=1e-2, total_steps=10, clip_norm=None)
    state = tx.init(params)
    sizes = sum(x.size for x in jax.tree.leaves(state) if jnp.ndim(x) > 0)
    adam_sizes = sum(x.size for x in jax.tree.leaves(make_optimizer("adam").init(params)) if jnp.ndim(x) > 0)
    assert sizes < 0.02 * adam_sizes, (sizes, adam_sizes)
    updates, _ = tx.update(grads, state, params)
    reference = optax.adafactor(optax.cosine_decay_schedule(1e-2, 10), multiply_by_parameter_scale=False,
                                weight_decay_rate=0.0)
    expected, _ = reference.update(grads, reference.init(params), params)
    chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-7)

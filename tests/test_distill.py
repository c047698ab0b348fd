"""Distillation losses: hand-computed KD, top-k equivalence, the teacher frozen inside one jitted step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leanjax.models import MLP, functional
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.transforms import apply, quantize
from leanjax.transforms.distill import (
    attention_transfer_loss,
    cache_topk,
    distill_trainable,
    distillation_loss,
    hidden_loss,
    init_projection,
    kd_loss,
    topk_kd_loss,
)


def test_kd_loss_hand_computed():
    s, t, temp = np.array([1.0, 0.0]), np.array([0.0, 2.0]), 2.0
    p = np.exp(t / temp) / np.exp(t / temp).sum()
    q = np.exp(s / temp) / np.exp(s / temp).sum()
    expected = temp ** 2 * np.sum(p * np.log(p / q))
    assert float(kd_loss(jnp.asarray(s)[None], jnp.asarray(t)[None], temp)[0]) == pytest.approx(expected, rel=1e-5)
    assert float(kd_loss(jnp.asarray(t)[None], jnp.asarray(t)[None], temp)[0]) == pytest.approx(0.0, abs=1e-6)


def test_topk_kd_equals_full_when_k_covers_all_classes():
    s, t = jax.random.normal(jax.random.key(0), (4, 5)), jax.random.normal(jax.random.key(1), (4, 5))
    v, i = jax.lax.top_k(t, 5)
    np.testing.assert_allclose(topk_kd_loss(s, v, i, 3.0), kd_loss(s, t, 3.0), rtol=1e-5, atol=1e-6)


def test_hidden_and_attention_transfer():
    h = jax.random.normal(jax.random.key(0), (2, 3, 4))
    proj = {"kernel": jnp.eye(4), "bias": jnp.zeros(4)}
    np.testing.assert_allclose(hidden_loss(h, h, proj), 0.0, atol=1e-7)
    assert init_projection(jax.random.key(0), 4, 6)["kernel"].shape == (4, 6)
    a = jax.random.normal(jax.random.key(1), (2, 5, 5, 8))
    np.testing.assert_allclose(attention_transfer_loss(a, 3 * jnp.concatenate([a, a], -1)), 0.0, atol=1e-6)
    assert attention_transfer_loss(a, jnp.flip(a, 1)).shape == (2,)


def test_int8_teacher_frozen_in_one_jitted_step():
    teacher_apply, teacher = functional(MLP(6, (16,), 3, rngs=nnx.Rngs(0)))
    student_apply, student = functional(MLP(6, (4,), 3, rngs=nnx.Rngs(1)))
    teacher = quantize(teacher, r".*kernel", bits=8)
    params = {"student": student, "teacher": teacher}
    loss = distillation_loss(student_apply, apply(teacher_apply), inputs="image", alpha=0.7, temperature=2.0)
    mask = distill_trainable(params)
    tx = optax.sgd(0.1)
    state = TrainState.create(params, tx, jax.random.key(0), trainable=mask)
    step = make_train_step(loss, tx, trainable=mask)
    batch = {"image": jax.random.normal(jax.random.key(2), (8, 6)), "label": jnp.arange(8) % 3}
    before = jax.tree.map(jnp.copy, params)
    state, metrics = step(state, batch)
    assert set(metrics) >= {"kd", "ce", "accuracy", "loss"}
    jax.tree.map(np.testing.assert_array_equal, state.params["teacher"], before["teacher"])
    assert not np.allclose(state.params["student"]["layers"][0]["kernel"], before["student"]["layers"][0]["kernel"])


def test_cache_topk_keeps_order_and_drops_padding():
    logits = jnp.arange(12.0).reshape(4, 3)
    batches = [{"x": logits[:3], "mask": np.array([True, True, True])},
               {"x": jnp.concatenate([logits[3:], logits[3:]]), "mask": np.array([True, False])}]
    out = cache_topk(lambda b: b["x"], batches, 4, k=2)
    np.testing.assert_array_equal(out["teacher_indices"], [[2, 1]] * 4)
    np.testing.assert_array_equal(out["teacher_values"][:, 0], [2, 5, 8, 11])
    with pytest.raises(ValueError, match="expected 5"):
        cache_topk(lambda b: b["x"], batches, 5, k=2)


def test_preempted_fit_stops_the_experiment():
    """A fit stopped by SIGTERM must stop prune/distill, not let them go on with a half-trained model."""
    from types import SimpleNamespace

    from leanjax.experiments import _minilm

    done = SimpleNamespace(preempted=False)
    assert _minilm.finished(done) is done
    with pytest.raises(_minilm.Preempted):
        _minilm.finished(SimpleNamespace(preempted=True))


def test_teacher_labelled_pool_keeps_the_first_labels_and_takes_the_teacher_class_elsewhere():
    from leanjax.transforms.distill import teacher_labelled_pool

    arrays = {"input_ids": np.arange(10).reshape(5, 2), "label": np.array([0, 1, 2, 0, 1], np.int32)}
    cache = {"teacher_values": np.zeros((5, 2), np.float32),
             "teacher_indices": np.array([[2, 0], [2, 1], [1, 0], [1, 2], [0, 1]], np.int32)}
    pool = teacher_labelled_pool(arrays, cache, 2)
    assert pool["label"].tolist() == [0, 1, 1, 1, 0]
    assert pool["labelled"].tolist() == [True, True, False, False, False]
    assert pool["teacher_indices"] is cache["teacher_indices"] and pool["label"].dtype == np.int32
    with pytest.raises(ValueError, match="num_labelled=6"):
        teacher_labelled_pool(arrays, cache, 6)
    with pytest.raises(ValueError, match="teacher cache has 4 rows"):
        teacher_labelled_pool(arrays, {k: v[:4] for k, v in cache.items()}, 2)

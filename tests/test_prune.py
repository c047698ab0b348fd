"""Pruning masks, the schedule, the optax wrapper through `fit` (resume), compaction and packed 2:4."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from leanjax.losses import classification_loss
from leanjax.models import CNN, MLP, SequenceClassifier, TransformerConfig, functional
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import fit
from leanjax.transforms import apply
from leanjax.transforms.compact import cnn_groups, compact, mlp_groups, structured_masks, transformer_groups
from leanjax.transforms.prune import (
    apply_masks,
    complete_masks,
    gradual_pruning,
    keep_masks,
    magnitude,
    masks_of,
    nm_mask,
    polynomial_schedule,
    prune_by_schedule,
    report,
    top_scores,
)
from leanjax.transforms.sparse24 import Packed24, encode24, pack24


class _Iter:
    """A tiny resumable batch iterator with grain's get_state/set_state."""

    def __init__(self, x, y):
        self.x, self.y, self.i = x, y, 0

    def __next__(self):
        j = self.i % (len(self.x) // 8)
        self.i += 1
        return {"image": self.x[8 * j:8 * j + 8], "label": self.y[8 * j:8 * j + 8]}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def _mlp():
    apply_fn, params = functional(MLP(12, (16,), 3, rngs=nnx.Rngs(0)))
    return apply_fn, params


def test_magnitude_layer_and_global():
    params = {"a": jnp.arange(1.0, 11.0), "b": jnp.arange(1.0, 11.0) * 100}
    layer = magnitude(r"a|b")(params, jnp.asarray(0.5))
    assert int(layer["a"].sum()) == 5 and int(layer["b"].sum()) == 5
    glob = magnitude(r"a|b", scope="global")(params, jnp.asarray(0.5))
    assert int(glob["a"].sum()) == 0 and int(glob["b"].sum()) == 10
    with pytest.raises(ValueError, match="matched no leaf"):
        magnitude(r"nothing")(params, jnp.asarray(0.5))


def test_schedule_hits_target_at_end_step():
    s = polynomial_schedule(0.8, begin_step=2, end_step=10)
    assert float(s(0)) == 0.0 and float(s(2)) == 0.0
    assert float(s(10)) == pytest.approx(0.8) and float(s(50)) == pytest.approx(0.8)
    assert 0.0 < float(s(4)) < 0.8
    apply_fn, params = _mlp()
    tx = prune_by_schedule(optax.sgd(0.1), s, magnitude(r".*kernel"), update_every=1)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    for step in range(10):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    sp = report(params, masks_of(state))
    assert sp["overall"] == pytest.approx(0.8, abs=0.01)
    assert sp["layers/0/kernel"] == pytest.approx(0.8, abs=0.01)


def test_gradual_pruning_reaches_each_injected_sparsity_with_one_compiled_update():
    from leanjax.optim import set_hyperparams

    _, params = _mlp()
    tx = gradual_pruning(lambda: optax.sgd(0.1), magnitude(r".*kernel"), ramp_steps=6, update_every=2)
    update = jax.jit(tx.update)
    grads = jax.tree.map(jnp.ones_like, params)
    for target in (0.5, 0.75):
        state = set_hyperparams(TrainState.create(params, tx, jax.random.key(0)), sparsity=target).opt_state
        p = params
        for _ in range(8):
            updates, state = update(grads, state, p)
            p = optax.apply_updates(p, updates)
        assert report(p, masks_of(state))["overall"] == pytest.approx(target, abs=0.01)
    assert update._cache_size() == 1  # the sparsity lives in the state, not in the program


def test_top_scores_keeps_largest_signed_values():
    scores = {"a": jnp.asarray([-5.0, 1.0, -0.5, 3.0]), "b": jnp.asarray([2.0, 2.0])}
    keep = top_scores(r"a")(scores, jnp.asarray(0.5))
    np.testing.assert_array_equal(keep["a"], [False, True, False, True])  # magnitude would keep -5
    assert keep["b"] is None


def test_movement_scores_follow_their_definition():
    """S = -sum_t w_t * g_t (Sanh et al. 2020) over the real loss's gradients, masks = top-S per layer."""
    apply_fn, params = _mlp()
    x = jax.random.normal(jax.random.key(1), (8, 12))
    y = jnp.arange(8) % 3
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()  # noqa: E731
    schedule = polynomial_schedule(0.5, 0, 4)
    tx = prune_by_schedule(optax.sgd(0.5), schedule, top_scores(r".*kernel"), movement=True)
    state = tx.init(params)
    assert masks_of(state)["layers"][0]["kernel"].all()  # sparsity 0 at step 0: nothing pruned yet
    expected = jax.tree.map(jnp.zeros_like, state.scores)
    update = jax.jit(tx.update)
    p = params
    for t in range(6):
        grads = jax.grad(loss)(p)
        expected = jax.tree.map(lambda s, g, w: None if s is None else s - g * w, expected, grads, p,
                                is_leaf=lambda s: s is None)
        updates, state = update(grads, state, p)
        p = optax.apply_updates(p, updates)
        kernel = expected["layers"][0]["kernel"]
        mask = masks_of(state)["layers"][0]["kernel"]
        np.testing.assert_allclose(state.scores["layers"][0]["kernel"], kernel, rtol=1e-5, atol=1e-7)
        # Kept weights are the top-S ones at the schedule's sparsity for step t + 1.
        n_keep = kernel.size - int(round(float(schedule(min(t + 1, 4))) * kernel.size))
        assert int(mask.sum()) == n_keep
        if n_keep < kernel.size:
            assert float(kernel[mask].min()) >= float(kernel[~mask].max())
        assert (p["layers"][0]["kernel"][~mask] == 0).all()
    assert state.scores["layers"][0]["bias"] is None  # only the pruned leaves are scored
    # Movement is not magnitude: the masks differ from the top-|w| masks at the same sparsity.
    by_size = magnitude(r".*kernel")(params, jnp.asarray(0.5))["layers"][0]["kernel"]
    assert not np.array_equal(np.asarray(by_size), np.asarray(masks_of(state)["layers"][0]["kernel"]))


def test_complete_masks_gives_both_trees_the_same_pruned_leaves():
    a = {"x": jnp.array([True, False]), "y": None, "z": None}
    b = {"x": None, "y": jnp.array([[False, True]]), "z": None}
    ab, ba = complete_masks(a, b), complete_masks(b, a)
    assert jax.tree.structure(ab, is_leaf=lambda v: v is None) == jax.tree.structure(ba, is_leaf=lambda v: v is None)
    chex.assert_trees_all_equal(ab["x"], a["x"])
    assert ab["y"].dtype == bool and bool(ab["y"].all()) and ab["z"] is None
    chex.assert_trees_all_equal(ba["y"], b["y"])
    assert bool(ba["x"].all())


def test_masks_survive_checkpoint_resume(tmp_path):
    apply_fn, params = _mlp()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 12)).astype(np.float32), rng.integers(0, 3, 64)
    tx = prune_by_schedule(optax.adam(1e-2), polynomial_schedule(0.5, 0, 6), magnitude(r".*kernel"))
    step = make_train_step(classification_loss(apply_fn), tx)

    def state0():
        return TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(0))

    full = fit(state0(), step, _Iter(x, y), num_steps=10, workdir=str(tmp_path / "full"), progress=False,
               checkpoint_every=5, log_every=5)
    first = fit(state0(), step, _Iter(x, y), num_steps=5, workdir=str(tmp_path / "resumed"), progress=False,
                checkpoint_every=5, log_every=5)
    assert first.state.step == 5
    resumed = fit(state0(), step, _Iter(x, y), num_steps=10, workdir=str(tmp_path / "resumed"),
                  progress=False, checkpoint_every=5, log_every=5)
    assert resumed.start_step == 5
    chex.assert_trees_all_equal(masks_of(resumed.state.opt_state), masks_of(full.state.opt_state))
    chex.assert_trees_all_close(resumed.state.params, full.state.params, atol=1e-6)
    assert report(resumed.state.params, masks_of(resumed.state.opt_state))["overall"] == pytest.approx(0.5, abs=0.02)


def test_keep_masks_holds_zeros():
    apply_fn, params = _mlp()
    masks = magnitude(r".*kernel")(params, jnp.asarray(0.75))
    params = apply_masks(params, masks)
    tx = keep_masks(optax.adam(1e-1), masks)
    state = tx.init(params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    new = optax.apply_updates(params, updates)
    assert report(new, masks)["overall"] == pytest.approx(0.75, abs=0.01)


def test_nm_mask_is_2_of_4():
    w = jax.random.normal(jax.random.key(0), (16, 5))
    m = nm_mask(w)
    assert m.shape == w.shape
    np.testing.assert_array_equal(np.asarray(m).reshape(4, 4, 5).sum(1), 2)
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(jnp.ones((6, 3)))


def test_packed24_round_trip_and_matmul():
    w = jax.random.normal(jax.random.key(1), (32, 6))
    m = nm_mask(w)
    p = encode24(w, m)
    assert p.values.shape == (16, 6) and p.index.shape == (4, 6) and p.index.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(p.materialise()), np.asarray(jnp.where(m, w, 0)))
    x = jax.random.normal(jax.random.key(2), (3, 32))
    out = jax.jit(apply(lambda w, x: x @ w))(p, x)
    np.testing.assert_allclose(out, x @ jnp.where(m, w, 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not 2:4"):
        encode24(w, jnp.ones_like(m))


def test_pack24_model_outputs_and_size():
    apply_fn, params = functional(MLP(16, (16,), 8, rngs=nnx.Rngs(0)))
    masks = jax.tree.map(lambda _: None, params)
    from leanjax.transforms.prune import nm_masks
    masks = nm_masks(params, r".*kernel")
    packed = pack24(params, r".*kernel", masks)
    assert isinstance(packed["layers"][0]["kernel"], Packed24)
    x = jax.random.normal(jax.random.key(0), (4, 16))
    np.testing.assert_allclose(apply(apply_fn)(packed, x), apply_fn(apply_masks(params, masks), x), atol=1e-5)
    from leanjax.transforms import weight_bytes
    ratio = weight_bytes(packed["layers"][0]["kernel"]) / params["layers"][0]["kernel"].nbytes
    assert ratio == pytest.approx(17 / 32)


def _apply_fn_of(make):
    """The apply function of the model `make` builds, without initialising it (nnx.eval_shape): the
    compacted params come from the big model, and a concrete init costs seconds of small compiles."""
    return functional(nnx.eval_shape(make))[0]


def _assert_compact_matches(apply_small, small, apply_fn, masked, *args):
    np.testing.assert_allclose(apply_small(small, *args), apply_fn(masked, *args), rtol=1e-4, atol=1e-5)


def test_compact_mlp_and_cnn_equal_masked():
    apply_fn, params = functional(MLP(12, (16, 8), 3, rngs=nnx.Rngs(0)))
    masks, keep = structured_masks(params, mlp_groups(params), 0.5)
    small = compact(apply_masks(params, masks), mlp_groups(params), keep)
    assert small["layers"][0]["kernel"].shape == (12, 8) and small["layers"][2]["kernel"].shape == (4, 3)
    apply_small = _apply_fn_of(lambda: MLP(12, (8, 4), 3, rngs=nnx.Rngs(1)))
    x = jax.random.normal(jax.random.key(0), (5, 12))
    _assert_compact_matches(apply_small, small, apply_fn, apply_masks(params, masks), x)

    apply_fn, params = functional(CNN(4, features=(4, 8), dense=8, image_size=8, rngs=nnx.Rngs(0)))
    groups = cnn_groups(params)
    masks, keep = structured_masks(params, groups, 0.5)
    small = compact(apply_masks(params, masks), groups, keep)
    assert small["hidden"]["kernel"].shape == (2 * 2 * 4, 4)
    apply_small = _apply_fn_of(lambda: CNN(4, features=(2, 4), dense=4, image_size=8, rngs=nnx.Rngs(1)))
    images = jax.random.uniform(jax.random.key(1), (3, 8, 8))
    _assert_compact_matches(apply_small, small, apply_fn, apply_masks(params, masks), images)


def test_compact_transformer_neurons_equal_masked():
    cfg = TransformerConfig(vocab_size=30, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                            max_position_embeddings=8, dropout=0.0)
    apply_fn, params = functional(SequenceClassifier(cfg, 3, rngs=nnx.Rngs(0)))
    groups = transformer_groups(params, cfg.num_heads, heads=False)
    masks, keep = structured_masks(params, groups, 0.5)
    small = compact(apply_masks(params, masks), groups, keep)
    small_cfg = TransformerConfig(**{**cfg.__dict__, "intermediate_size": 16})
    apply_small = _apply_fn_of(lambda: SequenceClassifier(small_cfg, 3, rngs=nnx.Rngs(1)))
    ids = jax.random.randint(jax.random.key(0), (2, 8), 0, 30)
    _assert_compact_matches(apply_small, small, apply_fn, apply_masks(params, masks), ids, jnp.ones((2, 8)))
    # Head groups: masks zero q/k/v columns and output rows in head-sized blocks.
    head_groups = transformer_groups(params, cfg.num_heads, neurons=False)
    masks, keep = structured_masks(params, head_groups, 0.5)
    q = np.asarray(masks["encoder"]["layers"][0]["attention"]["query"]["kernel"])
    assert q.shape == (16, 16) and q.all(0).reshape(2, 8).all(1).sum() == 1
    # Heads and neurons removed together: a model with half the heads (same head size) computes the same.
    both = transformer_groups(params, cfg.num_heads)
    masks, keep = structured_masks(params, both, 0.5)
    small = compact(apply_masks(params, masks), both, keep)
    assert small["encoder"]["layers"][0]["attention"]["query"]["kernel"].shape == (16, 8)
    small_cfg = TransformerConfig(**{**cfg.__dict__, "intermediate_size": 16, "num_heads": 1})
    apply_small = _apply_fn_of(lambda: SequenceClassifier(small_cfg, 3, rngs=nnx.Rngs(1)))
    _assert_compact_matches(apply_small, small, apply_fn, apply_masks(params, masks), ids, jnp.ones((2, 8)))

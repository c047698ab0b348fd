"""LoRA / rsLoRA / DoRA typed weights: init, formulas, rules, merge and unmerge."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leanjax.transforms as T

KEY = jax.random.key(0)


def _params(shape=(12, 8)):
    return {"dense": {"kernel": jax.random.normal(jax.random.key(1), shape), "bias": jnp.zeros(shape[-1])}}


def _random_b(params, key=jax.random.key(2)):
    """Adapters after some training: B no longer zero."""
    def one(x):
        if isinstance(x, T.LoRA):
            return dataclasses.replace(x, b=jax.random.normal(key, x.b.shape, x.b.dtype))
        return x
    return jax.tree.map(one, params, is_leaf=T.is_typed)


def _layer(p, x):
    return x @ p["dense"]["kernel"] + p["dense"]["bias"]


def test_init_is_the_base_model_and_a_follows_peft():
    p = _params()
    lp = T.lora(p, r"dense/kernel", rank=4, key=KEY)
    w = lp["dense"]["kernel"]
    assert w.a.shape == (12, 4) and w.b.shape == (4, 8)
    np.testing.assert_array_equal(w.b, 0)
    # Kaiming-uniform with a=sqrt(5), as PEFT: bound 1/sqrt(fan_in).
    assert float(jnp.abs(w.a).max()) <= 1 / math.sqrt(12)
    assert float(jnp.abs(w.a).max()) > 0.5 / math.sqrt(12)
    x = jax.random.normal(KEY, (3, 12))
    np.testing.assert_allclose(T.apply(_layer)(lp, x), _layer(p, x), rtol=1e-6)


@pytest.mark.parametrize("variant,expected_scale", [("lora", 16 / 4), ("rslora", 16 / 2)])
def test_forward_is_base_plus_scaled_ab(variant, expected_scale):
    p = _params()
    lp = _random_b(T.lora(p, r"dense/kernel", rank=4, alpha=16, variant=variant, key=KEY))
    w = lp["dense"]["kernel"]
    assert w.scale == expected_scale
    x = jax.random.normal(KEY, (3, 12))
    manual = x @ (p["dense"]["kernel"] + expected_scale * w.a @ w.b)
    np.testing.assert_allclose(jax.jit(T.apply(_layer))(lp, x), manual, rtol=1e-5, atol=1e-5)
    merged = p["dense"]["kernel"] + expected_scale * w.a @ w.b
    np.testing.assert_allclose(T.merge(lp)["dense"]["kernel"], merged, rtol=1e-6, atol=1e-6)


def test_dora_matches_the_paper_formula():
    p = _params()
    lp = T.lora(p, r"dense/kernel", rank=2, variant="dora", key=KEY)
    w0 = p["dense"]["kernel"]
    np.testing.assert_allclose(lp["dense"]["kernel"].magnitude, jnp.linalg.norm(w0, axis=0), rtol=1e-6)
    lp = _random_b(lp)
    w = lp["dense"]["kernel"]
    w = dataclasses.replace(w, magnitude=w.magnitude * 1.5)
    lp["dense"]["kernel"] = w
    v = w0 + w.scale * w.a @ w.b
    expected = w.magnitude * v / jnp.linalg.norm(v, axis=0, keepdims=True)
    x = jax.random.normal(KEY, (3, 12))
    np.testing.assert_allclose(T.merge(lp)["dense"]["kernel"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(T.apply(_layer)(lp, x), x @ expected, rtol=1e-5, atol=1e-5)


def test_dora_norm_is_constant_in_the_backward_pass():
    lp = _random_b(T.lora(_params(), r"dense/kernel", rank=2, variant="dora", key=KEY))
    x = jax.random.normal(KEY, (3, 12))
    w = lp["dense"]["kernel"]

    def loss_rule(m):
        q = {"dense": {**lp["dense"], "kernel": dataclasses.replace(w, magnitude=m)}}
        return T.apply(_layer)(q, x).sum()

    def loss_manual(m):
        v = w.base + w.scale * w.a @ w.b
        return (x @ (m * v / jax.lax.stop_gradient(jnp.linalg.norm(v, axis=0)))).sum()

    np.testing.assert_allclose(jax.grad(loss_rule)(w.magnitude), jax.grad(loss_manual)(w.magnitude),
                               rtol=1e-5)


def test_merge_unmerge_round_trip():
    p = _params()
    lp = _random_b(T.lora(p, r"dense/kernel", rank=3, key=KEY))
    back = T.unmerge(T.merge(lp), lp)
    np.testing.assert_allclose(back["dense"]["kernel"].base, p["dense"]["kernel"], atol=1e-5)
    np.testing.assert_array_equal(back["dense"]["kernel"].a, lp["dense"]["kernel"].a)
    dora = T.lora(p, r"dense/kernel", rank=2, variant="dora", key=KEY)
    with pytest.raises(ValueError, match="DoRA"):
        T.unmerge(T.merge(dora), dora)


@pytest.mark.filterwarnings("ignore:leanjax.transforms")
@pytest.mark.parametrize("variant", ["lora", "dora"])
@pytest.mark.parametrize("contract", ["x@W", "W@x", "x@W.T"])
def test_dot_general_any_orientation(contract, variant):
    # DoRA rescales output columns: contracting them away ("W@x") falls back to the full layer weight.
    lp = _random_b(T.lora(_params((8, 6)), r"dense/kernel", rank=2, key=KEY, variant=variant))
    fns = {
        "x@W": lambda p, x: x @ p["dense"]["kernel"],
        "W@x": lambda p, x: p["dense"]["kernel"] @ x.T[:6],
        "x@W.T": lambda p, x: x[:, :6] @ p["dense"]["kernel"].T,
    }
    x = jax.random.normal(KEY, (5, 8))
    f = fns[contract]
    np.testing.assert_allclose(T.apply(f)(lp, x), f(T.merge(lp), x), rtol=1e-5, atol=1e-5)


def test_gather_on_lora_embedding():
    table = {"embed": jax.random.normal(KEY, (10, 6))}
    lp = _random_b(T.lora(table, "embed", rank=2, key=KEY))
    ids = jnp.array([[0, 3, 9], [2, 2, 1]])
    f = lambda p, ids: jnp.take(p["embed"], ids, axis=0)  # noqa: E731
    np.testing.assert_allclose(T.apply(f)(lp, ids), f(T.merge(lp), ids), rtol=1e-6, atol=1e-6)


def test_dropout_applies_only_with_a_key():
    lp = _random_b(T.lora(_params(), r"dense/kernel", rank=4, dropout=0.5, key=KEY))
    x = jax.random.normal(KEY, (64, 12))
    plain = T.apply(_layer)(lp, x)
    np.testing.assert_allclose(plain, _layer(T.merge(lp), x), rtol=1e-5, atol=1e-5)
    dropped = T.apply(_layer)(T.with_dropout_rng(lp, jax.random.key(5)), x)
    assert not np.allclose(dropped, plain)
    # Dropout touches only the adapter's input: the base path is unchanged.
    w = lp["dense"]["kernel"]
    base = x @ w.base
    adapter = (dropped - base - lp["dense"]["bias"]) / w.scale
    assert np.linalg.matrix_rank(np.asarray(adapter), tol=1e-3) <= w.rank


def test_no_target_lists_paths():
    with pytest.raises(ValueError, match="dense/kernel"):
        T.lora(_params(), r".*query/kernel", rank=2, key=KEY)


def test_predicate_targets_and_axis_split():
    p = {"qkv": jnp.ones((8, 2, 4)), "out": jnp.ones((2, 4, 8))}
    lp = T.lora(p, lambda path, leaf: path == "qkv", rank=2, key=KEY, layout="ioo")
    assert lp["qkv"].a.shape == (8, 2) and lp["qkv"].b.shape == (2, 2, 4)
    lp = T.lora(p, "out", rank=2, key=KEY, layout="iio")
    assert lp["out"].a.shape == (2, 4, 2) and lp["out"].b.shape == (2, 8)
    f = lambda p, x: jnp.einsum("bhd,hdo->bo", x, p["out"])  # noqa: E731
    lp = _random_b(lp)
    x = jax.random.normal(KEY, (3, 2, 4))
    np.testing.assert_allclose(T.apply(f)(lp, x), f(T.merge(lp), x), rtol=1e-5, atol=1e-5)


def test_dropout_rng_set_inside_apply_takes_effect():
    """The docstring says: call with_dropout_rng inside the loss. Inside `apply` it used to do nothing."""
    lp = _random_b(T.lora(_params(), r"dense/kernel", rank=4, dropout=0.5, key=KEY))
    x = jax.random.normal(KEY, (64, 12))

    def loss(p, x, rng):
        return _layer(T.with_dropout_rng(p, rng), x)

    plain = T.apply(_layer)(lp, x)
    inside = jax.jit(T.apply(loss))(lp, x, jax.random.key(5))
    outside = T.apply(_layer)(T.with_dropout_rng(lp, jax.random.key(5)), x)
    assert not np.allclose(inside, plain)
    np.testing.assert_allclose(inside, outside, rtol=1e-5, atol=1e-5)  # same keys either way
    # and gradients flow through it with the dropout applied
    grads = T.grad(lambda p, x: jnp.sum(loss(p, x, jax.random.key(5)) ** 2))(lp, x)
    ref = T.grad(lambda p, x: jnp.sum(_layer(p, x) ** 2))(T.with_dropout_rng(lp, jax.random.key(5)), x)
    np.testing.assert_allclose(grads["dense"]["kernel"].a, ref["dense"]["kernel"].a, rtol=1e-4, atol=1e-5)

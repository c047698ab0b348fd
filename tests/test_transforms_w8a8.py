"""W8A8 / W4A8 serving matmuls: close to the float reference, integer dots in the compiled program."""

import chex
import jax
import jax.numpy as jnp
import pytest

from leanjax import transforms


def _rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture
def x_and_w():
    x = jax.random.normal(jax.random.key(0), (4, 16, 64))
    w = jax.random.normal(jax.random.key(1), (64, 96)) * 0.05
    return x, w


def matmul(params, x):
    return x @ params["k"]


def test_w8a8_matches_float_within_two_percent_and_runs_int8_dots(x_and_w):
    x, w = x_and_w
    params = transforms.serve_int8({"k": w}, "k")
    assert isinstance(params["k"], transforms.W8A8)
    fn = jax.jit(transforms.apply(matmul))
    out = fn(params, x)
    assert out.shape == (4, 16, 96) and out.dtype == jnp.float32
    assert _rel_err(out, x @ w) < 0.02
    hlo = fn.lower(params, x).compile().as_text()
    assert "s8[" in hlo and "s32[" in hlo  # the dot takes int8 operands and accumulates in int32
    # Storage is the Int8 weight's: codes plus one scale per output channel.
    assert transforms.weight_bytes(params) == 64 * 96 + 96 * 4


@pytest.mark.parametrize("group_size", [None, 16])
def test_w4a8_keeps_int4_storage_and_its_accuracy(x_and_w, group_size):
    x, w = x_and_w
    int4 = transforms.quantize({"k": w}, "k", bits=4, group_size=group_size)
    served = transforms.serve_int8(int4, "k")
    out = jax.jit(transforms.apply(matmul))(served, x)
    weight_only = jax.jit(transforms.apply(matmul))(int4, x)
    # Activation rounding adds well under a percent on top of the int4 weight error.
    assert abs(_rel_err(out, x @ w) - _rel_err(weight_only, x @ w)) < 0.01
    assert _rel_err(out, weight_only) < 0.02
    assert transforms.weight_bytes(served) == transforms.weight_bytes(int4)


def test_zero_rows_and_other_primitives_fall_back_to_the_wrapped_weight(x_and_w):
    x, w = x_and_w
    x = x.at[0, 0].set(0.0)
    params = transforms.serve_int8({"k": w, "e": w}, "k")
    params = {**params, **transforms.serve_int8({"e": w}, "e", axis=-1)}
    out = jax.jit(transforms.apply(matmul))(params, x)
    assert jnp.all(out[0, 0] == 0) and jnp.all(jnp.isfinite(out))
    rows = jax.jit(transforms.apply(lambda p, i: jnp.take(p["e"], i, axis=0)))(params, jnp.array([3, 5]))
    chex.assert_trees_all_close(rows, transforms.dense(params["e"].weight)[jnp.array([3, 5])])
    # `w.T @ ...` layouts are not the serving case: they run weight-only, with the same result.
    lhs = jax.jit(transforms.apply(lambda p, y: p["k"].T @ y))(params, jnp.ones((64, 3)))
    chex.assert_trees_all_close(lhs, transforms.dense(params["k"]).T @ jnp.ones((64, 3)), rtol=1e-5)


def test_serve_int8_rejects_nf4_and_double_wrapping(x_and_w):
    _, w = x_and_w
    with pytest.raises(TypeError, match="not integers"):
        transforms.serve_int8(transforms.quantize({"k": w}, "k", bits=4, scheme="nf4"), "k")
    with pytest.raises(TypeError, match="already W8A8"):
        transforms.serve_int8(transforms.serve_int8({"k": w}, "k"), "k")
    with pytest.raises(TypeError, match="Int8 or Int4"):
        transforms.W8A8(transforms.quantize({"k": w}, "k", bits=4, scheme="nf4")["k"])

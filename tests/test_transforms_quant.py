"""Int8 / Int4 / NF4 typed weights and fake quantization: error bounds, packing, rules, sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leanjax.transforms as T
from leanjax.transforms.quant import NF4_LEVELS

KEY = jax.random.key(0)
W = jax.random.normal(KEY, (32, 16))


def _group_absmax(w, axis, group_size):
    """Per-entry absmax of the group each entry belongs to (numpy reference)."""
    w = np.moveaxis(np.asarray(w), axis, -1)
    g = np.abs(w.reshape(*w.shape[:-1], -1, group_size)).max(-1, keepdims=True)
    return np.moveaxis(np.broadcast_to(g, (*w.shape[:-1], w.shape[-1] // group_size, group_size))
                       .reshape(w.shape), -1, axis)


# Rounding to the nearest code: |w - q(w)| <= absmax/(2*qmax) per group for int; for NF4, absmax times
# half the widest gap between adjacent levels (0.7230..1.0).
BOUNDS = {("int", 8): 0.5 / 127, ("int", 4): 0.5 / 7, ("nf4", 4): float(np.max(np.diff(NF4_LEVELS))) / 2}


@pytest.mark.parametrize("scheme,bits", list(BOUNDS))
@pytest.mark.parametrize("axis,group_size", [(-2, None), (-2, 8), (-1, None), (-1, 4)])
def test_dequantize_error_within_absmax_bound(scheme, bits, axis, group_size):
    q = T.encode(W, bits=bits, scheme=scheme, group_size=group_size, axis=axis)
    size = group_size or W.shape[axis]
    assert q.scale.shape[axis] == W.shape[axis] // size
    assert q.shape == W.shape and q.dtype == W.dtype and q.group_size == size
    err = np.abs(np.asarray(q.materialise()) - np.asarray(W))
    bound = BOUNDS[scheme, bits] * _group_absmax(W, axis, size)
    assert np.all(err <= bound * (1 + 1e-5) + 1e-7)
    # The absmax entry of every group is exact.
    np.testing.assert_allclose(np.abs(q.materialise()).max(), np.abs(W).max(), rtol=1e-6)


def test_per_group_beats_per_channel():
    per_channel = np.abs(T.encode(W, bits=4).materialise() - W).mean()
    per_group = np.abs(T.encode(W, bits=4, group_size=4).materialise() - W).mean()
    assert per_group < per_channel


@pytest.mark.parametrize("n", [7, 8])
def test_int4_packing_round_trip(n):
    codes = jax.random.randint(KEY, (3, n), 0, 16).astype(jnp.uint8)
    from leanjax.transforms.quant import _pack, _unpack
    packed = _pack(codes)
    assert packed.shape == (3, (n + 1) // 2) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(_unpack(packed, -1, n), codes)
    # An odd last axis: the logical shape is kept.
    w = jax.random.normal(KEY, (4, n))
    q = T.encode(w, bits=4)
    assert q.shape == (4, n) and q.data.shape == (4, (n + 1) // 2)


def test_int8_values_and_sizes():
    q = T.quantize({"w": W, "b": jnp.zeros(16)}, "w", bits=8)
    assert q["w"].data.dtype == jnp.int8 and int(jnp.abs(q["w"].data).max()) == 127
    assert T.weight_bytes(q) == 32 * 16 + 16 * 4 + 16 * 4
    q4 = T.quantize({"w": W}, "w", bits=4, scheme="nf4", group_size=8)
    assert T.weight_bytes(q4) == 32 * 16 // 2 + (32 // 8) * 16 * 4


@pytest.mark.parametrize("bits,scheme", [(8, "int"), (4, "int"), (4, "nf4")])
def test_matmul_rule_matches_dequantize_then_matmul(bits, scheme):
    q = T.quantize({"w": W}, "w", bits=bits, scheme=scheme, group_size=8)
    x = jax.random.normal(KEY, (5, 32))
    f = lambda p, x: x @ p["w"]  # noqa: E731
    np.testing.assert_allclose(jax.jit(T.apply(f))(q, x), f(T.dequantize(q), x), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda x: T.apply(f)(q, x).sum())(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: f(T.dequantize(q), x).sum())(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,scheme,axis,group_size", [
    (8, "int", -1, None), (4, "nf4", -1, 4), (4, "int", -2, None), (8, "int", -2, 5)])
def test_gather_dequantizes_only_the_rows(bits, scheme, axis, group_size):
    table = {"embed": jax.random.normal(KEY, (10, 8))}
    q = T.quantize(table, "embed", bits=bits, scheme=scheme, group_size=group_size, axis=axis)
    ids = jnp.array([[0, 3, 9], [2, 2, 1]])
    take = lambda p, ids: jnp.take(p["embed"], ids, axis=0)  # noqa: E731
    index = lambda p, ids: p["embed"][ids]  # noqa: E731
    for f in (take, index):
        np.testing.assert_allclose(T.apply(f)(q, ids), f(T.dequantize(q), ids), rtol=1e-6)
    # The lookup never builds the [10, 8] table: no float array of that shape in the program.
    jaxpr = jax.make_jaxpr(T.apply(take))(q, ids)
    assert "f32[10,8]" not in str(jaxpr)


def test_tied_head_and_bf16_cast():
    q = T.quantize({"embed": jax.random.normal(KEY, (10, 8))}, "embed", bits=4, axis=-1)
    h = jax.random.normal(KEY, (3, 8))
    head = lambda p, h: h @ p["embed"].T  # noqa: E731
    np.testing.assert_allclose(T.apply(head)(q, h), head(T.dequantize(q), h), rtol=1e-5, atol=1e-5)
    cast = T.apply(lambda p: p["embed"].astype(jnp.bfloat16))(q)
    assert isinstance(cast, T.Int4) and cast.dtype == jnp.bfloat16 and cast.data.dtype == jnp.uint8


def test_qat_straight_through_gradient_is_identity():
    w = jax.random.normal(KEY, (8, 4))
    c = jax.random.normal(jax.random.key(1), (8, 4))
    for bits, scheme in [(8, "int"), (4, "nf4")]:
        g = jax.grad(lambda w: jnp.sum(T.fake_quantize(w, bits=bits, scheme=scheme) * c))(w)
        np.testing.assert_allclose(g, c)
        np.testing.assert_allclose(T.fake_quantize(w, bits=bits, scheme=scheme),
                                   T.encode(w, bits=bits, scheme=scheme).materialise(), rtol=1e-6)


def test_qat_weights_train_and_export_to_real_codes():
    p = T.quantize({"w": W}, "w", bits=4, qat=True)
    assert isinstance(p["w"], T.FakeQuant)
    assert jax.tree.leaves(T.trainable(p)) == [True]
    x = jax.random.normal(KEY, (5, 32))
    f = lambda p, x: x @ p["w"]  # noqa: E731
    g = jax.grad(lambda p: T.apply(f)(p, x).sum())(p)
    np.testing.assert_allclose(g["w"].weight, jnp.broadcast_to(x.sum(0)[:, None], W.shape), rtol=1e-5)
    served = T.requantize(p)
    assert isinstance(served["w"], T.Int4)
    np.testing.assert_allclose(T.apply(f)(served, x), T.apply(f)(p, x), rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_path():
    with pytest.raises(ValueError, match="w: axis -2 has size 32, not a multiple of group_size 5"):
        T.quantize({"w": W}, "w", group_size=5)
    with pytest.raises(ValueError, match="unsupported"):
        T.quantize({"w": W}, "w", bits=3)
    with pytest.raises(TypeError, match="already"):
        T.quantize(T.quantize({"w": W}, "w"), "w")

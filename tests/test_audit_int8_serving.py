"""int8 serving regime tools: the W8A8 layer's time split and the shape sweep (tiny shapes)."""

import jax
import jax.numpy as jnp
import pytest

from leanjax import transforms
from leanjax.audit.int8_serving import shape_sweep, w8a8_split


def test_w8a8_split_times_every_piece_and_their_ratios():
    x = jax.random.normal(jax.random.key(0), (32, 16))
    kernel = jax.random.normal(jax.random.key(1), (16, 24))
    split = w8a8_split(x, kernel, rounds=1, iters=2)
    pieces = ("f32_dot", "quantize_activations", "int8_dot", "w8a8_layer", "rescale_outputs")
    assert all(split[k] >= 0 for k in pieces) and split["w8a8_layer"] > 0
    assert split["layer_speedup"] == pytest.approx(split["f32_dot"] / split["w8a8_layer"])
    assert split["int8_dot_speedup"] == pytest.approx(split["f32_dot"] / split["int8_dot"])
    assert split["rescale_outputs"] <= split["w8a8_layer"]


def test_w8a8_split_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[rows, K\]"):
        w8a8_split(jnp.ones((4, 8)), jnp.ones((6, 3)))


def test_shape_sweep_is_relative_to_the_first_arm_at_every_shape():
    w = jax.random.normal(jax.random.key(0), (16, 16))
    fn = transforms.apply(lambda p, x: jnp.tanh(x @ p))
    arms = {"f32": (fn, w), "int8": (fn, transforms.serve_int8({"k": w}, "k")["k"])}
    sweep = shape_sweep(arms, lambda b, s: (jnp.ones((b, s, 16)),), [(2, 3), (4, 5)], rounds=1, iters=1)
    assert set(sweep) == {"2x3", "4x5"}
    assert all(r["f32"] == 1.0 and r["int8"] > 0 for r in sweep.values())
    with pytest.raises(ValueError, match="must be positive"):
        shape_sweep(arms, lambda b, s: (jnp.ones((b, s, 16)),), [(0, 3)])

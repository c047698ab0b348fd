"""Multi-layer perceptron for flat features or small images (MNIST, 8x8 digits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from leanjax.models.layers import Dense, dropout, fold


def as_float_input(x: jax.Array) -> jax.Array:
    """Integer inputs are 8-bit pixels: scale them to [0, 1]; float inputs pass through."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(jnp.float32) / 255.0
    return x


class MLP(nnx.Module):
    """`hidden` ReLU layers with dropout after each, then a linear output layer.

    `__call__(x, *, dropout_rng=None)`: `x` is `[B, ...]` with `prod(...) == in_features` (images are
    flattened; uint8 pixels are scaled to [0, 1]); returns `[B, out_features]`.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
                 dropout: float = 0.0, activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
                 rngs: nnx.Rngs):
        widths = [in_features, *hidden, out_features]
        self.layers = nnx.List([Dense(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.in_features = in_features
        self.dropout = dropout
        self.activation = activation

    def __call__(self, x: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
        x = as_float_input(x).reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} features per example, got input shape "
                             f"{x.shape} after flattening")
        *hidden, last = self.layers
        for i, layer in enumerate(hidden):
            x = dropout(self.activation(layer(x)), self.dropout, fold(dropout_rng, i))
        return last(x)

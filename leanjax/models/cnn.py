"""Small convolutional classifier for MNIST (28x28) and the 8x8 scikit-learn digits.

conv3x3-ReLU-maxpool2 blocks, then a ReLU dense layer with dropout and a linear head. No
normalisation layer: the model state stays params only (no BatchNorm statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from leanjax.models.layers import Conv, Dense, dropout
from leanjax.models.mlp import as_float_input


def _max_pool2(x: jax.Array) -> jax.Array:
    # Floor division of odd sizes (7 -> 3), as in flax.nnx.max_pool with VALID padding.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class CNN(nnx.Module):
    """`__call__(images, *, dropout_rng=None) -> logits [B, num_classes]`.

    `images` is `[B, H, W, C]` or `[B, H, W]` (one channel), uint8 pixels (scaled to [0, 1] here) or
    floats already in the range the caller wants. `H == W == image_size` (28 for MNIST, 8 for digits),
    which sizes the dense layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, features: Sequence[int] = (32, 64),
                 dense: int = 128, *, dropout: float = 0.0, image_size: int = 28, rngs: nnx.Rngs):
        widths = [in_channels, *features]
        self.convs = nnx.List([Conv(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        side = image_size
        for _ in features:
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {len(features)} pooling blocks")
        self.hidden = Dense(side * side * features[-1], dense, rngs=rngs)
        self.head = Dense(dense, num_classes, rngs=rngs)
        self.in_channels = in_channels
        self.image_size = image_size
        self.dropout = dropout

    def __call__(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
        x = as_float_input(images)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[1:] != (self.image_size, self.image_size, self.in_channels):
            raise ValueError(f"CNN built for images [B, {self.image_size}, {self.image_size}, "
                             f"{self.in_channels}], got {images.shape}")
        for conv in self.convs:
            x = _max_pool2(jax.nn.relu(conv(x)))
        x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.head(dropout(x, self.dropout, dropout_rng))

"""Whole-tree operations on params holding typed weights: trainable masks, merging, stored size.

`trainable(params)` is the mask the optimizer and train step use with `leanjax.trees.partition` /
`combine` (re-exported here): typed weights flatten into their array leaves, so a LoRA weight's `a`
and `b` are trained while its (possibly quantized) base is frozen and gets neither gradients nor
optimizer state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leanjax.transforms.typed import dense_compiled, is_typed
from leanjax.trees import combine, partition

__all__ = ["combine", "merge", "partition", "trainable", "weight_bytes"]


def trainable(params: Any, *, freeze_plain: bool = False) -> Any:
    """A pytree of bools with the structure of `params`: True where an optimizer should train.

    Adapters (LoRA `a`, `b`, DoRA magnitude) and fake-quantized weights are trainable; bases, codes and
    scales are not. Plain float arrays are trainable unless `freeze_plain`; other leaves (integer
    arrays, the functions an Equinox module holds) never are.
    """

    def one(x):
        if is_typed(x):
            return x.trainable_mask()
        is_float = isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.inexact)
        return is_float and not freeze_plain

    return jax.tree.map(one, params, is_leaf=is_typed)


def merge(params: Any) -> Any:
    """Every typed weight replaced by the plain array it stands for (LoRA merged, codes dequantized)."""
    return jax.tree.map(lambda x: dense_compiled(x) if is_typed(x) else x, params, is_leaf=is_typed)


def weight_bytes(params: Any) -> int:
    """Bytes the params take as stored: int4/NF4 codes are half a byte each, scales and adapters count."""
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(params))

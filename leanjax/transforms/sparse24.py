"""Packed 2:4 weights: half the values plus 2-bit positions, a typed weight that really is smaller.

2:4 sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378) keeps 2
of every 4 consecutive weights along the contraction axis. `Packed24` stores an `[..., K, N]` kernel as
`values [..., K/2, N]` (the kept weights, in order) and `index [..., K/8, N]` uint8: each kept weight's
position in its group of 4 (2 bits), four positions to a byte. For float32 that is 16 + 1 bits per
weight instead of 32 (0.53x); for bfloat16 8 + 1 (0.56x).

Its `dot_general` rule scatters the values back into a dense `[K, N]` tile right next to the matmul
(one layer at a time, never the whole model at once) and multiplies; XLA CPU has no sparse matmul
unit, so the gain here is size, not speed (sparse tensor cores on Ampere+ GPUs would give both).

    params = pack24(params, r".*kernel", masks)   # masks from `leanjax.transforms.prune.nm_masks`
    logits = apply(apply_fn)(params, x)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import quax
from jax import lax
from jaxtyping import ArrayLike

from leanjax.transforms.prune import Masks, nm_mask
from leanjax.transforms.select import Targets, select
from leanjax.transforms.typed import TypedWeight, dense, frozen
from leanjax.trees import path_str

_POSITIONS_PER_BYTE = 4


class Packed24(TypedWeight):
    """A 2:4-sparse `[..., K, N]` weight: `values [..., K/2, N]`, `index [..., K/8, N]` (uint8)."""

    values: jax.Array
    index: jax.Array

    def aval(self):
        *lead, half, n = self.values.shape
        return jax.core.ShapedArray((*lead, 2 * half, n), self.values.dtype)

    @property
    def stack_ndim(self) -> int:
        return self.values.ndim - 2

    def trainable_mask(self):
        return frozen(self)

    def materialise(self):
        *lead, half, n = self.values.shape
        positions = _unpack_positions(self.index)                              # [..., K/2, N] in 0..3
        slots = jnp.arange(4, dtype=jnp.uint8).reshape(1, 1, 4, 1)
        pairs = lambda x: x.reshape(*lead, half // 2, 2, 1, n)                  # noqa: E731
        # Each group of 4 outputs receives its 2 values at their positions (one-hot sum, no scatter).
        hits = pairs(positions) == slots
        tile = jnp.where(hits, pairs(self.values), jnp.zeros((), self.values.dtype)).sum(axis=-3)
        return tile.reshape(*lead, 2 * half, n)


def _pack_positions(positions: jax.Array) -> jax.Array:
    """`[..., K/2, N]` positions in 0..3 -> `[..., K/8, N]` bytes, four 2-bit positions per byte."""
    *lead, half, n = positions.shape
    p = positions.astype(jnp.uint8).reshape(*lead, half // _POSITIONS_PER_BYTE, _POSITIONS_PER_BYTE, n)
    return p[..., 0, :] | (p[..., 1, :] << 2) | (p[..., 2, :] << 4) | (p[..., 3, :] << 6)


def _unpack_positions(index: jax.Array) -> jax.Array:
    *lead, q, n = index.shape
    parts = jnp.stack([(index >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)      # [..., K/8, 4, N]
    return parts.reshape(*lead, q * _POSITIONS_PER_BYTE, n)


def encode24(w: jax.Array, mask: jax.Array | None = None) -> Packed24:
    """Pack a weight 2:4: in each group of 4 along K, two values kept with their 2-bit positions.

    Args:
      w: `[..., K, N]`, K a multiple of 8.
      mask: the two entries of every 4 to keep; default the two largest |w| (`prune.nm_mask`).

    Returns:
      A `Packed24` typed weight: half the values plus the indices.
    """
    if w.ndim < 2 or w.shape[-2] % 8:
        raise ValueError(f"Packed24 needs a [..., K, N] weight with K a multiple of 8, got shape {w.shape}")
    mask = nm_mask(w, 2, 4, axis=-2) if mask is None else mask
    *lead, k, n = w.shape
    groups = mask.reshape(*lead, k // 4, 4, n)
    if not bool(jnp.all(groups.sum(-2) == 2)):
        raise ValueError("mask is not 2:4: every group of 4 along K must keep exactly 2 entries")
    # Positions of the kept entries in each group, in increasing order: sort keys put kept ones first.
    order = jnp.argsort(~groups, axis=-2, stable=True)[..., :2, :]             # [..., K/4, 2, N]
    values = jnp.take_along_axis(w.reshape(*lead, k // 4, 4, n), order, axis=-2)
    flat = lambda x: x.reshape(*lead, k // 2, n)                               # noqa: E731
    return Packed24(flat(values), _pack_positions(flat(order)))


def pack24(params: Any, targets: Targets, masks: Masks | None = None) -> Any:
    """Targeted leaves replaced by `Packed24`.

    Args:
      params: a params tree.
      targets: a regex on '/'-joined paths, or `fn(path, leaf) -> bool`.
      masks: a mask tree (e.g. `nm_masks`); a targeted leaf uses its entry when given.

    Returns:
      `params` with the targeted leaves packed 2:4.
    """
    # Flattening drops the None entries of a mask tree: only pruned leaves are listed.
    mask_of = {} if masks is None else {
        path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
    return select(params, targets, lambda path, w: encode24(w, mask_of.get(path)))


def _dot(lhs, rhs, params):
    return lax.dot_general_p.bind(dense(lhs), dense(rhs), **params)


@quax.register(lax.dot_general_p)
def _dot_rhs(lhs: ArrayLike, rhs: Packed24, **params):
    return _dot(lhs, rhs, params)


@quax.register(lax.dot_general_p)
def _dot_lhs(lhs: Packed24, rhs: ArrayLike, **params):
    return _dot(lhs, rhs, params)

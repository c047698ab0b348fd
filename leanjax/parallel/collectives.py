"""Losses whose collectives are written out by hand with `jax.shard_map`.

`vocab_parallel_cross_entropy` never gathers the logits: with the vocabulary sharded over the `tensor`
axis, each device holds `[b, t, V / tensor]` logits and the softmax normaliser and the label's logit
are assembled with one `pmax` and two `psum`s of `[b, t]` arrays, instead of an all-gather of the full
`[b, t, V]` logits (the saving grows with the vocabulary). The masked mean over the batch is reduced
across the batch axes in the same program (`psum` of the loss sum and of the token count), so padded
tokens on one device do not skew the mean.

`sharded_lm_loss` is `leanjax.losses.lm_loss` with that reduction: a drop-in `loss_fn` for
`make_train_step` when the logits are vocab-sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _axes_dividing(mesh: jax.sharding.Mesh, names: Sequence[str], dim: int) -> tuple[str, ...]:
    chosen, size = [], 1
    for name in names:
        n = mesh.shape.get(name, 1)
        if n > 1 and dim % (size * n) == 0:
            chosen.append(name)
            size *= n
    return tuple(chosen)


def vocab_parallel_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None,
                                 mesh: jax.sharding.Mesh, *, batch_axes: Sequence[str] = ("data", "fsdp"),
                                 vocab_axis: str = "tensor") -> jax.Array:
    """Masked mean next-token cross-entropy of `logits [B, ..., V]` against int `labels [B, ...]`.

    Mesh axes that are absent, of size 1 or do not divide the dimension are not used, so the result is
    the same on every mesh (and equals `losses.masked_mean(losses.cross_entropy(...), mask)`).
    """
    if mask is None:
        mask = jnp.ones(labels.shape, jnp.bool_)
    batch = _axes_dividing(mesh, batch_axes, labels.shape[0])
    vocab = _axes_dividing(mesh, (vocab_axis,), logits.shape[-1])
    extra = (None,) * (labels.ndim - 1)
    batch_spec = batch if batch else None
    vocab_spec = vocab[0] if vocab else None

    def local(lg, lb, mk):
        lg = lg.astype(jnp.float32)
        v_local = lg.shape[-1]
        # The max only keeps exp() in range; it is a constant for the gradient.
        m = jax.lax.stop_gradient(lg.max(axis=-1))
        if vocab:
            m = jax.lax.pmax(m, vocab)
            offset = jax.lax.axis_index(vocab) * v_local
        else:
            offset = 0
        sumexp = jnp.exp(lg - m[..., None]).sum(axis=-1)
        local_label = lb - offset
        here = (local_label >= 0) & (local_label < v_local)
        picked = jnp.take_along_axis(lg, jnp.clip(local_label, 0, v_local - 1)[..., None], axis=-1)[..., 0]
        picked = jnp.where(here, picked, 0.0)
        if vocab:
            sumexp = jax.lax.psum(sumexp, vocab)
            picked = jax.lax.psum(picked, vocab)
        per_token = jnp.log(sumexp) + m - picked
        w = mk.astype(jnp.float32)
        total, count = (per_token * w).sum(), w.sum()
        if batch:
            total, count = jax.lax.psum((total, count), batch)
        return total / jnp.maximum(count, 1.0)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(batch_spec, *extra, vocab_spec), P(batch_spec, *extra),
                                                     P(batch_spec, *extra)),
                         out_specs=P())(logits, labels, mask)


def sharded_lm_loss(apply_fn: Callable, mesh: jax.sharding.Mesh, **axes: Any) -> Callable:
    """`loss_fn(params, batch, rng)` for `{'inputs', 'targets'[, 'target_mask']}` using the vocab-parallel
    cross-entropy (see `leanjax.losses.lm_loss` for the unsharded one)."""

    def loss_fn(params: Any, batch: dict, rng: jax.Array):
        logits = apply_fn(params, batch["inputs"], dropout_rng=rng)
        return vocab_parallel_cross_entropy(logits, batch["targets"], batch.get("target_mask"), mesh, **axes), {}

    return loss_fn

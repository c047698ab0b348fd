"""Cross-entropy over a large vocabulary without materialising the full f32 logits.

A language model's last step, `logits = hidden @ embedding.T` followed by a softmax cross-entropy, builds
a `[tokens, vocab]` f32 array: at batch 4 x 1024 with Llama 3's 128,256-token vocabulary that is 2 GiB,
plus as much again for its gradient, the largest activation of a small-batch (Q)LoRA step. Here the
tokens are cut into chunks that one `lax.scan` visits in turn; each chunk's logits are computed in f32,
reduced to a log-sum-exp and the target's logit, and dropped. The chunk body is `jax.checkpoint`ed with
nothing saved, so the backward pass recomputes one chunk's logits at a time as well: peak memory is one
chunk's `[chunk, vocab]` f32 logits (and their cotangent) whatever the sequence length. The same idea is
Liger Kernel's fused linear cross-entropy (Hsu et al. 2024, https://arxiv.org/abs/2410.10989) and Apple's
Cut Cross-Entropy (Wijmans et al. 2024, https://arxiv.org/abs/2411.09009).

The output embedding may be a typed weight (`leanjax.transforms`: LoRA, quantized): it is only ever used
in one `dot_general`, so the function runs under `transforms.apply` like any other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _block_logits(hidden, block, vocab_axis: int, soft_cap: float | None):
    """f32 logits `[n, v]` of `hidden [n, D]` against one block of the output embedding."""
    logits = lax.dot_general(hidden, block, (((1,), (1 - vocab_axis,)), ((), ())),
                             preferred_element_type=jnp.float32).astype(jnp.float32)
    return logits if soft_cap is None else soft_cap * jnp.tanh(logits / soft_cap)


def _chunk_losses(hidden, embedding, targets, *, vocab_axis: int, soft_cap: float | None, vocab_block: int):
    """Per-token `logsumexp(logits) - logits[target]` of one chunk `hidden [n, D]`, logits in f32.

    With `vocab_block` < V the vocabulary is visited in blocks with a running (max, sum of exponentials),
    each block's body checkpointed: no `[n, V]` array, and no full-table copy (XLA CPU upcasts a bf16 dot's
    operands to f32: the whole table, without blocks).
    """
    vocab = jnp.shape(embedding)[vocab_axis]
    if vocab_block >= vocab:
        logits = _block_logits(hidden, embedding, vocab_axis, soft_cap)
        target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        return jax.nn.logsumexp(logits, axis=-1) - target_logit

    @jax.checkpoint
    def body(carry, start):
        running_max, running_sum, target_logit = carry
        block = lax.dynamic_slice_in_dim(embedding, start, vocab_block, axis=vocab_axis)
        logits = _block_logits(hidden, block, vocab_axis, soft_cap)
        # The max only keeps exp() in range; logsumexp's value and gradient do not depend on it.
        new_max = lax.stop_gradient(jnp.maximum(running_max, logits.max(-1)))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(logits - new_max[:, None]).sum(-1)
        local = targets - start
        inside = (local >= 0) & (local < vocab_block)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, vocab_block - 1)[:, None], axis=-1)[:, 0]
        return (new_max, running_sum, target_logit + jnp.where(inside, picked, 0.0)), None

    n = hidden.shape[0]
    init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))
    starts = jnp.arange(0, vocab, vocab_block, dtype=jnp.int32)
    (running_max, running_sum, target_logit), _ = lax.scan(body, init, starts)
    return running_max + jnp.log(running_sum) - target_logit


def _vocab_block(vocab: int, requested: int) -> int:
    """The largest divisor of `vocab` not above `requested` and at least `requested / 4` (blocks tile the
    vocabulary exactly, so none needs padding), else the whole vocabulary."""
    for size in range(min(requested, vocab), max(requested // 4, 1) - 1, -1):
        if vocab % size == 0:
            return size
    return vocab


def chunked_cross_entropy(
    hidden: jax.Array,
    embedding: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = 1024,
    vocab_axis: int = 0,
    soft_cap: float | None = None,
    vocab_block: int | None = 16384,
) -> jax.Array:
    """Per-token softmax cross-entropy of `hidden @ embedding` against `targets`, a chunk of tokens at a time.

    Equal to `losses.cross_entropy(logits, targets)` with `logits = hidden @ embedding.T` (in f32, soft-capped
    if asked), in value and gradient, without building the `[tokens, vocab]` logits.

    Args:
      hidden: the final hidden states (after the final norm), `[..., D]`, any float dtype (bf16 is fine: the
        logits are accumulated in f32).
      embedding: the output embedding, `[V, D]` (a tied input table or HF's `lm_head.weight`) with
        `vocab_axis=0`, or a `[D, V]` kernel with `vocab_axis=1`; a plain array or a typed weight.
      targets: integer next-token ids, `hidden.shape[:-1]`, each in `[0, V)`.
      chunk_size: tokens per chunk; peak memory holds about two `[chunk_size, V]` f32 arrays. The tokens are
        padded up to a multiple of it (padding costs compute, not correctness).
      vocab_axis: which axis of `embedding` indexes the vocabulary (0 or 1).
      soft_cap: Gemma's final logit soft-cap `c` (`logits = c * tanh(logits / c)`), or None.
      vocab_block: vocabulary entries per block inside a chunk (the largest divisor of V not above it; None or
        >= V: one block). Blocks slice the embedding: pass None for a typed (e.g. quantized) embedding, which
        a slice would materialise.

    Returns:
      f32 per-token losses with `targets`' shape (mask and average them with `losses.masked_mean`).
    """
    if vocab_axis not in (0, 1) or jnp.ndim(embedding) != 2:
        raise ValueError(f"embedding must be 2-D with vocab_axis 0 or 1; got shape {jnp.shape(embedding)}, "
                         f"vocab_axis={vocab_axis}")
    model_dim = jnp.shape(embedding)[1 - vocab_axis]
    if hidden.shape[-1] != model_dim:
        raise ValueError(f"hidden {hidden.shape} does not match embedding {jnp.shape(embedding)} "
                         f"(vocab_axis={vocab_axis}): model dimension {hidden.shape[-1]} != {model_dim}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {targets.shape} must be hidden's leading shape {hidden.shape[:-1]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = targets.size
    chunk = min(chunk_size, n)
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n
    flat_hidden = jnp.pad(hidden.reshape(n, model_dim), ((0, pad), (0, 0)))
    flat_targets = jnp.pad(targets.reshape(n).astype(jnp.int32), (0, pad))

    vocab = jnp.shape(embedding)[vocab_axis]
    block = vocab if vocab_block is None else _vocab_block(vocab, vocab_block)

    @jax.checkpoint  # nothing saved: the backward pass recomputes this chunk's logits
    def one(h, t):
        return _chunk_losses(h, embedding, t, vocab_axis=vocab_axis, soft_cap=soft_cap, vocab_block=block)

    def body(carry, xs):
        return carry, one(*xs)

    _, per_token = lax.scan(body, None, (flat_hidden.reshape(num_chunks, chunk, model_dim),
                                         flat_targets.reshape(num_chunks, chunk)))
    return per_token.reshape(-1)[:n].reshape(targets.shape)

"""Chunked cross-entropy: equal to the plain loss and gradient, on typed weights too, and smaller."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leanjax import losses, transforms
from leanjax.losses_chunked import chunked_cross_entropy

B, T, D, V = 2, 7, 16, 50


def _inputs(seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k1, (B, T, D))
    table = jax.random.normal(k2, (V, D)) * 0.5
    targets = jax.random.randint(k3, (B, T), 0, V)
    mask = jax.random.bernoulli(k4, 0.7, (B, T))
    return hidden, table, targets, mask


def _plain(hidden, table, targets, mask, soft_cap=None):
    logits = hidden @ table.T
    if soft_cap is not None:
        logits = soft_cap * jnp.tanh(logits / soft_cap)
    return losses.masked_mean(losses.cross_entropy(logits, targets), mask)


@pytest.mark.parametrize("chunk_size,soft_cap,vocab_block", [(4, None, None), (5, 3.0, None), (1000, None, None),
                                                             (4, None, 10), (3, 3.0, 25)])
def test_equal_to_plain_loss_and_gradient(chunk_size, soft_cap, vocab_block):
    hidden, table, targets, mask = _inputs()

    def chunked(hidden, table):
        per_token = chunked_cross_entropy(hidden, table, targets, chunk_size=chunk_size, soft_cap=soft_cap,
                                          vocab_block=vocab_block)
        return losses.masked_mean(per_token, mask)

    want, want_grads = jax.value_and_grad(_plain, argnums=(0, 1))(hidden, table, targets, mask, soft_cap)
    got, got_grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, table)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-4, atol=1e-6)


def test_kernel_layout_and_bf16_hidden():
    hidden, table, targets, _ = _inputs(1)
    want = losses.cross_entropy(hidden.astype(jnp.bfloat16).astype(jnp.float32) @ table.T, targets)
    got = chunked_cross_entropy(hidden.astype(jnp.bfloat16), table.T, targets, chunk_size=3, vocab_axis=1,
                                vocab_block=10)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_typed_output_embedding():
    """A quantized table with LoRA adapters on it: same loss and adapter gradients as the dense table."""
    hidden, table, targets, mask = _inputs(2)
    params = transforms.lora(transforms.quantize({"table": table}, "table", bits=8), "table", rank=2,
                             key=jax.random.key(0))
    weight = params["table"]
    weight = type(weight)(weight.base, weight.a, weight.b + 0.01, alpha=weight.alpha)  # b=0 would hide errors

    def chunked(a, b, h):
        w = type(weight)(weight.base, a, b, alpha=weight.alpha)
        per_token = transforms.apply(lambda w, h: chunked_cross_entropy(h, w, targets, chunk_size=4,
                                                                         vocab_block=None))(w, h)
        return losses.masked_mean(per_token, mask)

    def plain(a, b, h):
        w = type(weight)(weight.base, a, b, alpha=weight.alpha)
        return _plain(h, transforms.dense(w), targets, mask)

    args = (weight.a, weight.b, hidden)
    got, got_grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))(*args)
    want, want_grads = jax.value_and_grad(plain, argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-4, atol=1e-6)


def test_vocab_blocks_tile_the_vocabulary():
    from leanjax.losses_chunked import _vocab_block

    assert _vocab_block(128_256, 16384) == 16032
    assert _vocab_block(1024, 16384) == 1024
    assert _vocab_block(1009, 512) == 1009  # a prime: one block


def test_never_builds_full_logits():
    """Compiled peak at a 32k vocabulary: the chunked gradient's temporaries stay far below one f32 logits."""
    n, d, v = 2048, 64, 32_768
    hidden = jax.ShapeDtypeStruct((n, d), jnp.float32)
    table = jax.ShapeDtypeStruct((v, d), jnp.float32)
    targets = jnp.zeros((n,), jnp.int32)

    def temp_bytes(loss):
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, table).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = n * v * 4
    plain = temp_bytes(lambda h, w: losses.cross_entropy(h @ w.T, targets).mean())
    chunked = temp_bytes(lambda h, w: chunked_cross_entropy(h, w, targets, chunk_size=128).mean())
    assert plain >= logits_bytes
    assert chunked < logits_bytes / 4, (chunked, logits_bytes)


def test_bad_shapes_are_named():
    hidden, table, targets, _ = _inputs()
    with pytest.raises(ValueError, match="model dimension"):
        chunked_cross_entropy(hidden, table.T, targets)
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(hidden, table, targets[:, :3])

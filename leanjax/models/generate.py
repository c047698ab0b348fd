"""Text generation with a KV cache for `leanjax.models.decoder.Decoder`: one jitted program per shape.

`generate` left-pads a batch of prompts of different lengths (positions restart at each prompt's first
real token, padding slots are never attended), runs one prefill over all prompt tokens, then a
`lax.scan` of single-token decode steps that write their keys and values into the cache. Sampling is
greedy (`temperature=0`), or temperature with nucleus (top-p, Holtzman et al. 2019,
https://arxiv.org/abs/1904.09751) filtering. The params may hold typed weights (int8, NF4, LoRA merged or
not): the program runs under `leanjax.transforms.apply`, so they are used where they lie.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leanjax.transforms.typed import apply


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(tokens, positions, segment_ids)`, each `[B, P]`: prompts right-aligned, padding marked 0.

    Args:
      prompts: token id lists (at least one token each).
      pad_id: the id written into padding slots (never attended).

    Returns:
      The padded tokens, positions counted from each prompt's first token, and 1/0 real/padding marks.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    segments = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, width - len(p):] = p
        segments[row, width - len(p):] = 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, segments


def sample(logits: jax.Array, key: jax.Array | None, temperature: float, top_p: float) -> jax.Array:
    """Next tokens `[B]` from f32 logits `[B, V]`: argmax at temperature 0, else temperature + top-p.

    Args:
      logits: the last position's logits.
      key: a PRNG key (ignored when greedy).
      temperature: 0 for greedy.
      top_p: keep the smallest set of tokens whose probability reaches `top_p` (1.0: all).

    Returns:
      int32 token ids.
    """
    if temperature == 0.0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, -1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, -1), -1)
        # Keep a token if the mass before it is below top_p (the first token always stays).
        keep_sorted = (cumulative - jax.nn.softmax(sorted_logits, -1)) < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(key, logits, -1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_p", "cache_dtype"))
def _generate(graphdef, state, tokens, positions, segments, key, *, max_new_tokens: int, temperature: float,
              top_p: float, cache_dtype):
    def run(state, tokens, positions, segments, key):
        model = nnx.merge(graphdef, state)
        b, width = tokens.shape
        cache = model.init_cache(b, width + max_new_tokens, cache_dtype)
        logits, cache = model.step(tokens, positions, segments, cache, 0)
        keys = jax.random.split(key, max_new_tokens)
        first = sample(logits, keys[0], temperature, top_p)
        lengths = positions[:, -1] + 1

        def decode(carry, xs):
            token, cache = carry
            i, k = xs
            pos = (lengths + i)[:, None]
            logits, cache = model.step(token[:, None], pos, jnp.ones_like(pos), cache, width + i)
            nxt = sample(logits, k, temperature, top_p)
            return (nxt, cache), token

        (last, _), out = jax.lax.scan(decode, (first, cache), (jnp.arange(max_new_tokens - 1), keys[1:]))
        return jnp.concatenate([out.T, last[:, None]], axis=1)

    return apply(run)(state, tokens, positions, segments, key)


def generate(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, key: jax.Array | None = None, cache_dtype: str | None = None) -> np.ndarray:
    """Continue each prompt by `max_new_tokens` tokens (no early stop at an end-of-sequence token).

    Args:
      model: a `Decoder` (its params may be typed weights).
      prompts: token id lists, of different lengths if need be.
      max_new_tokens: tokens to generate per prompt (>= 1).
      temperature: 0 for greedy decoding.
      top_p: nucleus sampling mass (with temperature > 0).
      key: PRNG key for sampling (default: key 0).
      cache_dtype: the KV cache's dtype (default: the model's compute dtype).

    Returns:
      `[B, max_new_tokens]` int32 tokens.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    tokens, positions, segments = left_pad(prompts)
    graphdef, state = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    out = _generate(graphdef, state, tokens, positions, segments, key, max_new_tokens=max_new_tokens,
                    temperature=float(temperature), top_p=float(top_p), cache_dtype=cache_dtype)
    return np.asarray(out)

"""Parameter-only building blocks shared by every leanjax model.

Each layer holds `nnx.Param` variables and nothing else, and touches its weights only through ops that
quax can dispatch on typed weights (LoRA, int8, NF4, pruning masks; see `leanjax.transforms`):
`x @ w` (dot_general) for dense layers, `jnp.take(table, ids, axis=0)` (gather) for embeddings,
`lax.dot_general` against the embedding table for a tied output head, elementwise ops for norms. A weight
is cast to the compute dtype only when its dtype differs, so a typed weight never sees a no-op
`convert_element_type`.

Dropout is a pure function of an explicit key (`key=None` means deterministic): models store no
`nnx.Rngs`, so the whole model state is its params.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def cast(w, dtype):
    """`w` in `dtype`, without adding a no-op cast (which typed weights would have to handle)."""
    return w if dtype is None or w.dtype == dtype else w.astype(dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when `key` is None or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def fold(key: jax.Array | None, site: int) -> jax.Array | None:
    """A distinct key per dropout site, derived from the layer key (None stays None)."""
    return None if key is None else jax.random.fold_in(key, site)


class Dense(nnx.Module):
    """`y = x @ kernel + bias` with `kernel: [in, out]` (HF `Linear.weight` transposed)."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 kernel_init: Initializer = nnx.initializers.lecun_normal(),
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = cast(x, self.dtype)
        y = x @ cast(self.kernel.get_value(), self.dtype or x.dtype)
        if self.bias is not None:
            y = y + cast(self.bias.get_value(), y.dtype)
        return y


class Embed(nnx.Module):
    """Lookup table `embedding: [num, features]`; `attend` is the tied output projection."""

    def __init__(self, num_embeddings: int, features: int, *,
                 embedding_init: Initializer = nnx.initializers.normal(0.02),
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.embedding = nnx.Param(embedding_init(rngs.params(), (num_embeddings, features), param_dtype))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return cast(jnp.take(self.embedding.get_value(), ids, axis=0), self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """`x @ embedding.T` as one dot_general (no transpose of the table, which may be typed)."""
        table = cast(self.embedding.get_value(), self.dtype or x.dtype)
        return jax.lax.dot_general(cast(x, table.dtype), table, (((x.ndim - 1,), (1,)), ((), ())))


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with `scale` and `bias` (HF `LayerNorm.weight` / `.bias`).

    Statistics are computed in float32 whatever the compute dtype, as HF and Flax do.
    """

    def __init__(self, features: int, *, eps: float = 1e-5, dtype=None, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale.get_value() + self.bias.get_value()
        return y.astype(out_dtype)


class Conv(nnx.Module):
    """2-D convolution, NHWC input, `kernel: [kh, kw, in, out]` (HWIO), SAME padding, stride 1."""

    def __init__(self, in_features: int, out_features: int, kernel_size: tuple[int, int] = (3, 3), *,
                 kernel_init: Initializer = nnx.initializers.lecun_normal(),
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        shape = (*kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x, cast(self.kernel.get_value(), x.dtype), window_strides=(1, 1), padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias.get_value()

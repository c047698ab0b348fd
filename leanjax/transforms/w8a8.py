"""Serving-time integer matmuls: int8 activations against integer-coded weights (W8A8, W4A8).

Weight-only quantization (`Int8`, `Int4`) saves memory, not time: its rule dequantizes the weight and
runs a float matmul (0.91x f32 on this repository's CPU, ENVIRONMENT.md). `W8A8` wraps such a weight so
that its matmul runs in integers instead: the activations are quantized on the fly, one absmax scale per
row (per token), the product is an int8 x int8 -> int32 `dot_general`, and the int32 result is rescaled
by the row scales and the weight's channel (or group) scales. This is the vector-wise scheme of
LLM.int8() (Dettmers et al. 2022, https://arxiv.org/abs/2208.07339) without its float outlier columns,
and SmoothQuant's W8A8 setting (Xiao et al. 2022, https://arxiv.org/abs/2211.10438) without its
smoothing: relative error ~1% on MiniLM-sized layers.

    params = serve_int8(params, r".*kernel")          # plain float kernels -> Int8 codes -> W8A8
    params = serve_int8(quantize(params, r".*kernel", bits=4, group_size=64), r".*kernel")   # W4A8
    logits = apply(model_fn)(params, batch)

Owns the `W8A8` typed weight, its `dot_general` rule, and `serve_int8`. Every other primitive on a
`W8A8` (an embedding `gather`, a cast) is handled by the wrapped weight's own rules. It is for inference:
rounding the activations has no useful gradient, so training should use the weight-only types.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import quax
from jax import lax
from jaxtyping import ArrayLike

from leanjax.transforms.quant import Int4, Int8, Quantized, _unpack, encode
from leanjax.transforms.select import Targets, select
from leanjax.transforms.typed import TypedWeight, frozen


class W8A8(TypedWeight):
    """An `Int8` or `Int4` weight whose matmuls quantize their activations to int8 and run in integers.

    The wrapped weight keeps its storage (codes and scales, packed for int4): `weight_bytes` is unchanged.
    Int4 codes are unpacked to int8 right next to the matmul.
    """

    weight: Int8 | Int4

    def __check_init__(self):
        if not isinstance(self.weight, (Int8, Int4)):
            raise TypeError(f"W8A8 wraps an Int8 or Int4 weight (integer codes), got {type(self.weight).__name__}")

    @staticmethod
    def default(primitive, values, params):
        # Anything but the matmul behaves exactly as the wrapped weight-only type (its rules, its warnings).
        unwrapped = [v.weight if isinstance(v, W8A8) else v for v in values]
        return quax.quaxify(primitive.bind)(*unwrapped, **params)

    def aval(self):
        return self.weight.aval()

    def materialise(self):
        return self.weight.materialise()

    @property
    def stack_ndim(self) -> int:
        return self.weight.stack_ndim

    def trainable_mask(self):
        return frozen(self)


def serve_int8(params: Any, targets: Targets, *, axis: int = -2) -> Any:
    """The targeted weights of `params` wrapped as `W8A8`, for integer matmuls at serving time.

    A targeted float leaf is first quantized to per-channel `Int8` (absmax over `axis`); a targeted `Int8` or
    `Int4` leaf keeps its codes and scales. NF4 codes are not integers and raise.

    Args:
      params: a params tree.
      targets: a regex on '/'-joined paths, or `fn(path, leaf) -> bool`.
      axis: the scales' axis for float leaves (-2: the input axis of an `[in, out]` kernel).

    Returns:
      `params` whose targeted leaves multiply as int8 x int8 -> int32, activations quantized per row.
    """

    def one(path: str, leaf):
        if isinstance(leaf, W8A8):
            raise TypeError(f"{path}: already W8A8")
        if isinstance(leaf, Quantized):
            if not isinstance(leaf, (Int8, Int4)):
                raise TypeError(f"{path}: {type(leaf).__name__} codes are not integers; W8A8 needs Int8 or Int4")
            return W8A8(leaf)
        if isinstance(leaf, TypedWeight):
            raise TypeError(f"{path}: cannot serve a {type(leaf).__name__} in int8; merge it first")
        return W8A8(encode(leaf, bits=8, axis=axis, path=path))

    return select(params, targets, one)


def _codes(q: Int8 | Int4) -> jax.Array:
    """The weight's integer codes as int8 (int4 codes lie in [-7, 7])."""
    return q.data if isinstance(q, Int8) else q.levels(_unpack(q.data, -1, q.n))


def _quantize_rows(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """`x` as int8 codes with one absmax scale per slice along `axis` (kept with size 1)."""
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True) / 127.0
    # An all-zero row has scale 0; its codes are 0 whatever it is divided by.
    codes = jnp.round(x / jnp.where(scale == 0, 1.0, scale)).astype(jnp.int8)
    return codes, scale


def _int_dot(x: jax.Array, w: W8A8, dims, params):
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dims
    q = w.weight
    axis = q.axis % q.ndim
    # The serving case: activations `[..., K]` (any contracted axis) times one layer's `[K, N]` kernel,
    # contracted on its quantization axis. Anything else (stacked, batched) runs weight-only.
    if q.ndim != 2 or lhs_batch or rhs_batch or tuple(rhs_contract) != (axis,) or len(lhs_contract) != 1:
        return quax.quaxify(lax.dot_general_p.bind)(x, q, dimension_numbers=dims, **params)
    out_dtype = params.get("preferred_element_type") or jnp.result_type(x.dtype, q.dtype)
    (k,) = lhs_contract
    xq, x_scale = _quantize_rows(x, k)
    x_scale = jnp.squeeze(x_scale, k)[..., None]  # lhs free axes, then the output channel
    codes = jnp.moveaxis(_codes(q), axis, 0)  # [K, N]
    w_scale = jnp.moveaxis(q.scale, axis, 0).astype(jnp.float32)  # [groups, N]
    groups = w_scale.shape[0]
    if groups == 1:
        acc = lax.dot_general(xq, codes, (((k,), (0,)), ((), ())), preferred_element_type=jnp.int32)
        out = acc.astype(jnp.float32) * w_scale[0]
    else:
        # One int32 partial sum per group of the contracted axis, each rescaled by its group's scales.
        size = codes.shape[0] // groups
        xg = jnp.moveaxis(xq, k, -1)
        xg = xg.reshape(*xg.shape[:-1], groups, size)
        acc = lax.dot_general(xg, codes.reshape(groups, size, -1),
                              (((xg.ndim - 1,), (1,)), ((xg.ndim - 2,), (0,))), preferred_element_type=jnp.int32)
        # acc: [groups, *free, N]
        acc = acc.astype(jnp.float32) * w_scale.reshape(groups, *(1,) * (acc.ndim - 2), -1)
        out = acc.sum(0)
    return (out * x_scale).astype(out_dtype)


@quax.register(lax.dot_general_p)
def _dot_rhs(lhs: ArrayLike, rhs: W8A8, *, dimension_numbers, **params):
    return _int_dot(lhs, rhs, dimension_numbers, params)


@quax.register(lax.dot_general_p)
def _dot_lhs(lhs: W8A8, rhs: ArrayLike, *, dimension_numbers, **params):
    # `w @ x` is not a serving layout of leanjax models: run it weight-only.
    return quax.quaxify(lax.dot_general_p.bind)(lhs.weight, rhs, dimension_numbers=dimension_numbers, **params)

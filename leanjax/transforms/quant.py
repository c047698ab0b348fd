"""Weight quantization as a pytree transform: int8, int4 and NF4 typed weights, and fake quantization.

- `Int8`: absmax int8, one float scale per channel or per group of `group_size` along `axis`.
- `Int4`: absmax symmetric int4 in [-7, 7], two codes packed per byte along the last axis.
- `NF4`: 4-bit NormalFloat, the QLoRA data type (Dettmers et al. 2023, arXiv:2305.14314): codes index
  16 quantiles of a standard normal rescaled to [-1, 1], times a per-group absmax. Packed like `Int4`
  (no double quantization of the scales).
- `FakeQuant`: a float weight that computes as its quantize-dequantize round trip, with a
  straight-through estimator (gradient = identity) for quantization-aware training.

`quantize(params, targets, ...)` replaces the chosen leaves. Rules: `dot_general` dequantizes the
weight right next to the matmul and again in the backward pass (a custom VJP whose residual is the
codes), so the full-precision model never exists in memory at once, only a layer at a time; `gather`
(embedding lookup) gathers codes and scales and dequantizes only the gathered rows; `convert_element_type`
to another float dtype casts only the scales. Forward-mode differentiation (`jax.jvp`) through a
quantized matmul is not supported (custom VJP).
"""

from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import quax
from jax import lax
from jaxtyping import ArrayLike

from leanjax.transforms.layout import Layout, quant_axis
from leanjax.transforms.layout import resolve as resolve_layout
from leanjax.transforms.lora import LoRA
from leanjax.transforms.select import Targets, select
from leanjax.transforms.typed import TypedWeight, dense, dense_compiled, frozen, warn_materialise

# The 16 NF4 levels of QLoRA (bitsandbytes `create_normal_map`): quantiles of N(0, 1) scaled to [-1, 1],
# asymmetric so that 0 is represented exactly.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=np.float32)
_NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


def _grouped(x: jax.Array, axis: int, n_groups: int) -> jax.Array:
    """`x` with `axis` split into `(n_groups, group_size)`."""
    axis %= x.ndim
    return x.reshape(*x.shape[:axis], n_groups, x.shape[axis] // n_groups, *x.shape[axis + 1:])


def _apply_scale(values: jax.Array, scale: jax.Array, axis: int) -> jax.Array:
    """`values * scale`, each scale entry covering one group of consecutive entries along `axis`."""
    axis %= values.ndim
    n_groups = scale.shape[axis]
    out = _grouped(values, axis, n_groups) * jnp.expand_dims(scale, axis + 1)
    return out.reshape(values.shape)


def _absmax_scale(w: jax.Array, axis: int, group_size: int, qmax: float) -> jax.Array:
    """Per-group absmax over `axis`, divided by `qmax` (the largest code)."""
    n_groups = w.shape[axis] // group_size
    amax = jnp.max(jnp.abs(_grouped(w.astype(jnp.float32), axis, n_groups)), axis=(axis % w.ndim) + 1)
    return (amax / qmax).astype(w.dtype)


def _divide(w: jax.Array, scale: jax.Array, axis: int) -> jax.Array:
    # An all-zero group has scale 0; its codes are 0 whatever we divide by.
    safe = jnp.where(scale == 0, 1, scale).astype(jnp.float32)
    return _apply_scale(w.astype(jnp.float32), 1.0 / safe, axis)


def _pack(codes: jax.Array) -> jax.Array:
    """Two 4-bit codes per byte along the last axis (low nibble first), padding an odd axis with 0."""
    if codes.shape[-1] % 2:
        codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
    codes = codes.astype(jnp.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack(packed: jax.Array, axis: int, n: int) -> jax.Array:
    """Inverse of `_pack` along `axis` (the packed axis), keeping the first `n` codes."""
    axis %= packed.ndim
    both = jnp.stack([packed & 0xF, packed >> 4], axis=axis + 1)
    codes = both.reshape(*packed.shape[:axis], 2 * packed.shape[axis], *packed.shape[axis + 1:])
    return lax.slice_in_dim(codes, 0, n, axis=axis)


class Quantized(TypedWeight):
    """A weight stored as integer codes and float scales: `w = decode(codes) * scale` per group.

    `scale` has the weight's shape except along `axis`, where it has one entry per group (1 for
    per-channel absmax); it also carries the weight's dtype. `axis` is stored negative so that it names
    the same axis of a stacked weight and of one layer of it.
    """

    data: jax.Array
    scale: jax.Array
    axis: int = eqx.field(static=True)

    bits: ClassVar[int]
    scheme: ClassVar[str]

    @property
    def packed(self) -> bool:
        return self.bits == 4

    @abc.abstractmethod
    def decode(self, data: jax.Array, pack_axis: int) -> jax.Array:
        """Codes -> values before scaling, in the weight's dtype; `pack_axis` locates packed codes."""

    def aval(self):
        return jax.core.ShapedArray(self._shape, self.scale.dtype)

    @property
    def _shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def group_size(self) -> int:
        return self._shape[self.axis] // self.scale.shape[self.axis]

    def materialise(self):
        return _apply_scale(self.decode(self.data, -1), self.scale, self.axis)

    @property
    def stack_ndim(self) -> int:
        # data and scale agree on every axis before the quantization axis and the packed axis.
        special = [self.axis % len(self._shape)] + ([len(self._shape) - 1] if self.packed else [])
        return min(special)

    def trainable_mask(self):
        return frozen(self)

    def format(self) -> dict[str, Any]:
        """The `encode` arguments that reproduce this format (to re-quantize a merged weight)."""
        return dict(bits=self.bits, scheme=self.scheme, group_size=self.group_size, axis=self.axis)


class Int8(Quantized):
    bits = 8
    scheme = "int"

    def decode(self, data, pack_axis):
        return data.astype(self.scale.dtype)


class _Packed4(Quantized):
    """Two 4-bit codes per byte of `data` along the last axis; `n` is that axis's true length."""

    n: int = eqx.field(static=True)
    bits = 4

    @property
    def _shape(self):
        return (*self.data.shape[:-1], self.n)

    def decode(self, data, pack_axis):
        return self.levels(_unpack(data, pack_axis, self.n)).astype(self.scale.dtype)

    @abc.abstractmethod
    def levels(self, codes: jax.Array) -> jax.Array:
        """4-bit codes (0..15) -> the values they stand for, before scaling."""


class Int4(_Packed4):
    scheme = "int"

    def levels(self, codes):
        return codes.astype(jnp.int8) - 8


class NF4(_Packed4):
    scheme = "nf4"

    def levels(self, codes):
        return jnp.asarray(NF4_LEVELS)[codes]


# --- Encoding -------------------------------------------------------------------------------------------

_QMAX = {("int", 8): 127.0, ("int", 4): 7.0, ("nf4", 4): 1.0}


def _validate(path: str, w, bits: int, scheme: str, group_size: int | None, axis: int) -> tuple[int, int]:
    """`(group_size, axis)` normalised (a whole axis when None; axis negative), or a clear error."""
    if (scheme, bits) not in _QMAX:
        raise ValueError(f"{path}: unsupported scheme={scheme!r} bits={bits}; use int8, int4 or nf4 (bits=4)")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{path}: can only quantize floating weights, got {w.dtype}")
    shape = tuple(w.shape)
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"{path}: axis {axis} out of range for shape {shape}")
    size = shape[axis]
    group_size = group_size or size
    if size % group_size:
        raise ValueError(
            f"{path}: axis {axis} has size {size}, not a multiple of group_size {group_size} (shape {shape})")
    return group_size, axis % len(shape) - len(shape)


def encode(w: jax.Array, *, bits: int = 8, scheme: str = "int", group_size: int | None = None,
           axis: int = -2, path: str = "weight") -> Quantized:
    """Quantize one array with absmax scales over groups of `group_size` along `axis`.

    Args:
      w: the float array.
      bits: 8 or 4.
      scheme: 'int' (uniform) or 'nf4' (4-bit NormalFloat, QLoRA's).
      group_size: consecutive entries along `axis` sharing one scale; None: the whole axis (one scale per
        channel).
      axis: the axis the scales reduce over (-2: the input axis of an `[in, out]` kernel).
      path: the weight's name in error messages.

    Returns:
      A `Quantized` typed weight (`Int8`, `Int4` or `NF4`).
    """
    group_size, axis = _validate(path, w, bits, scheme, group_size, axis)
    return _encode(w, bits=bits, scheme=scheme, group_size=group_size, axis=axis)


# One compiled program per (shape, format) rather than a dispatch per op: quantizing a model eagerly
# would otherwise spend seconds compiling each small op for each distinct shape.
@functools.partial(jax.jit, static_argnames=("bits", "scheme", "group_size", "axis"))
def _encode(w: jax.Array, *, bits: int, scheme: str, group_size: int, axis: int) -> Quantized:
    scale = _absmax_scale(w, axis, group_size, _QMAX[scheme, bits])
    x = _divide(w, scale, axis)
    if scheme == "nf4":
        codes = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), x).astype(jnp.uint8)
        return NF4(_pack(codes), scale, axis, w.shape[-1])
    q = jnp.clip(jnp.round(x), -_QMAX[scheme, bits], _QMAX[scheme, bits]).astype(jnp.int8)
    if bits == 8:
        return Int8(q, scale, axis)
    return Int4(_pack(q + 8), scale, axis, w.shape[-1])


def fake_quantize(w: jax.Array, *, bits: int = 8, scheme: str = "int", group_size: int | None = None,
                  axis: int = -2) -> jax.Array:
    """Quantize-dequantize `w`, with a straight-through gradient: the backward pass sees the identity.

    Args:
      w: the float array.
      bits: 8 or 4.
      scheme: 'int' or 'nf4'.
      group_size: entries per scale along `axis`; None: one scale per channel.
      axis: the axis the scales reduce over.

    Returns:
      An array of `w`'s shape and dtype holding the values the quantized weight would serve.
    """
    q = encode(lax.stop_gradient(w), bits=bits, scheme=scheme, group_size=group_size, axis=axis)
    qdq = q.materialise()
    return w + lax.stop_gradient(qdq - w)


class FakeQuant(TypedWeight):
    """A trainable float weight that computes as `fake_quantize(weight)` (quantization-aware training).

    Unlike the stored formats, its full weight is its storage, so every primitive simply materialises
    it: there is nothing to warn about.
    """

    weight: jax.Array
    bits: int = eqx.field(static=True)
    scheme: str = eqx.field(static=True)
    group_size: int = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    @staticmethod
    def default(primitive, values, params):
        return primitive.bind(*(dense(v) for v in values), **params)

    def aval(self):
        return jax.core.ShapedArray(self.weight.shape, self.weight.dtype)

    def materialise(self):
        return fake_quantize(self.weight, bits=self.bits, scheme=self.scheme, group_size=self.group_size,
                             axis=self.axis)

    def encode(self) -> Quantized:
        return encode(self.weight, bits=self.bits, scheme=self.scheme, group_size=self.group_size,
                      axis=self.axis)

    @property
    def stack_ndim(self) -> int:
        return self.axis % self.weight.ndim

    def trainable_mask(self):
        return jax.tree.map(lambda _: True, self)


# --- The transform --------------------------------------------------------------------------------------


def quantize(params: Any, targets: Targets, *, bits: int = 8, scheme: str = "int",
             group_size: int | None = None, axis: int | None = None, layout: Layout = None,
             qat: bool = False) -> Any:
    """Replace the targeted float leaves of `params` by quantized typed weights.

    Args:
      params: any pytree of arrays; a targeted LoRA weight has its base quantized (QLoRA).
      targets: a regex matched (`re.fullmatch`) against '/'-joined paths, or `fn(path, leaf) -> bool`.
      bits: 8 gives `Int8`; 4 gives `Int4` (`scheme='int'`) or `NF4` (`scheme='nf4'`).
      scheme: 'int' (absmax integers) or 'nf4' (4-bit NormalFloat, with `bits=4`).
      group_size: scales are absmax per group of `group_size` consecutive entries along `axis`; None: one
        scale per channel (the whole axis).
      axis: the axis the groups run along. Default: the (last) input axis of `layout`, so one scale per
        output channel; without a layout, -2 (the input axis of an `[in, out]` kernel). For an embedding
        table `[vocab, features]` pass `axis=-1` for one scale per row.
      layout: the weights' axes ('io', 'oi', 'sio', 'ioo', ... see `leanjax.transforms.layout`), or
        `fn(path, leaf) -> layout`; LoRA weights carry their own.
      qat: trainable `FakeQuant` weights instead (quantization-aware training).

    Returns:
      `params` with the targeted leaves quantized.
    """
    def one(path: str, leaf):
        if isinstance(leaf, LoRA):
            return leaf.replace_base(quantize_one(path, leaf.base, leaf.layout))
        if isinstance(leaf, TypedWeight):
            raise TypeError(f"{path}: already a {type(leaf).__name__}; quantize the float weight")
        return quantize_one(path, leaf, layout)

    def quantize_one(path: str, leaf, layout):
        if isinstance(leaf, TypedWeight):
            raise TypeError(f"{path}: already a {type(leaf).__name__}; quantize the float weight")
        axis_ = axis
        if axis_ is None:
            axis_ = -2 if layout is None else quant_axis(*resolve_layout(layout, path, leaf))
        if qat:
            size, neg_axis = _validate(path, leaf, bits, scheme, group_size, axis_)
            return FakeQuant(leaf, bits, scheme, size, neg_axis)
        return encode(leaf, bits=bits, scheme=scheme, group_size=group_size, axis=axis_, path=path)

    return select(params, targets, one)


def dequantize(params: Any) -> Any:
    """Every quantized leaf back to a plain array (LoRA adapters over a quantized base are kept).

    Args:
      params: a params tree with typed weights.

    Returns:
      `params` with each quantized weight (or LoRA base) dequantized to its float dtype.
    """
    def one(x):
        if isinstance(x, LoRA):
            return x.replace_base(one(x.base))
        return dense_compiled(x) if isinstance(x, (Quantized, FakeQuant)) else x

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, TypedWeight))


# --- Rules ----------------------------------------------------------------------------------------------


def _tie(operands, trigger: jax.Array):
    """`operands` with each quantized one made to depend on the array `trigger`: a zero computed from
    one of its elements, which XLA cannot fold away, is added to every leaf (codes and scales).
    `min(|t|, 0)` is 0 for infinite `t` too (where `t * 0` would be NaN)."""
    zero = jnp.minimum(jnp.abs(lax.stop_gradient(jnp.ravel(trigger)[0])), 0)

    def tie(x):
        if not isinstance(x, Quantized):
            return x
        return jax.tree.map(lambda leaf: leaf + zero.astype(leaf.dtype), x)

    return tuple(tie(x) for x in operands)


def _dot_dequantized(lhs, rhs, params):
    """`dot_general` with one quantized operand, dequantized right next to the matmul.

    A custom VJP keeps the codes (not the dequantized weight) as the residual and dequantizes again in
    the backward pass. Each dequantization is made to depend on the activations (forward) or on the
    cotangent (backward) reaching this matmul, so that no scheduler can hoist every layer's
    dequantization to the start of the program and hold the whole full-precision model at once. XLA
    CPU drops optimization barriers, so the dependency is a data one (see `_tie`).
    """
    side = 0 if isinstance(lhs, Quantized) else 1

    def dot(lhs, rhs):
        return lax.dot_general_p.bind(dense(lhs), dense(rhs), **params)

    @jax.custom_vjp
    def qdot(lhs, rhs):
        return dot(lhs, rhs)

    def fwd(lhs, rhs):
        return dot(*_tie((lhs, rhs), (rhs, lhs)[side])), (lhs, rhs)

    def bwd(res, g):
        return jax.vjp(dot, *_tie(res, g))[1](g)

    qdot.defvjp(fwd, bwd)
    return qdot(lhs, rhs)


@quax.register(lax.dot_general_p)
def _dot_rhs(lhs: ArrayLike, rhs: Quantized, **params):
    return _dot_dequantized(lhs, rhs, params)


@quax.register(lax.dot_general_p)
def _dot_lhs(lhs: Quantized, rhs: ArrayLike, **params):
    return _dot_dequantized(lhs, rhs, params)


def take_axis(shape, dimension_numbers, slice_sizes) -> int | None:
    """The axis `k` if this gather takes whole slices along `k` alone (`jnp.take(x, ids, axis=k)`,
    `x[ids]`), else None."""
    dn = dimension_numbers
    if (len(dn.collapsed_slice_dims) != 1 or dn.operand_batching_dims
            or dn.start_index_map != dn.collapsed_slice_dims):
        return None
    (k,) = dn.collapsed_slice_dims
    expected = tuple(1 if d == k else s for d, s in enumerate(shape))
    return k if tuple(slice_sizes) == expected else None


@quax.register(lax.gather_p)
def _gather(operand: Quantized, indices: ArrayLike, *, dimension_numbers, slice_sizes, **params):
    shape = operand.shape
    k = take_axis(shape, dimension_numbers, slice_sizes)
    axis = operand.axis % len(shape)
    if k is None or (operand.packed and k == len(shape) - 1):
        return TypedWeight.default(lax.gather_p, (operand, indices), dict(
            dimension_numbers=dimension_numbers, slice_sizes=slice_sizes, **params))

    def take(x, idx):
        sizes = tuple(1 if d == k else s for d, s in enumerate(x.shape))
        # Out-of-bounds rows get the float fill (NaN) through the scales; codes are filled with 0.
        fill = dict(fill_value=0) if jnp.issubdtype(x.dtype, jnp.integer) else {}
        return lax.gather_p.bind(x, idx, dimension_numbers=dimension_numbers, slice_sizes=sizes,
                                 **{**params, **fill})

    data = take(operand.data, indices)
    # Output position of each operand axis other than k: the gathered slices land on `offset_dims`.
    kept = [d for d in range(len(shape)) if d != k]
    out_pos = dict(zip(kept, dimension_numbers.offset_dims))
    values = operand.decode(data, out_pos.get(len(shape) - 1, -1))
    if k == axis:
        scale = take(operand.scale, indices // operand.group_size)
        return values * scale
    return _apply_scale(values, take(operand.scale, indices), out_pos[axis])


@quax.register(lax.convert_element_type_p)
def _convert(operand: Quantized, *, new_dtype, **params):
    if not jnp.issubdtype(new_dtype, jnp.floating):
        warn_materialise("convert_element_type", operand)
        return lax.convert_element_type_p.bind(dense(operand), new_dtype=new_dtype, **params)
    return eqx.tree_at(lambda q: q.scale, operand, operand.scale.astype(new_dtype))


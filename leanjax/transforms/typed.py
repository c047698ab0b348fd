"""The typed-weight base class, `apply`, and the shared machinery of the rules.

A *typed weight* is a small pytree standing in for one weight array: a LoRA adapter over a base, a
quantized tensor, a fake-quantized one. Each is a `quax.ArrayValue` (https://github.com/patrick-kidger/quax):
inside `apply(fn)` JAX primitives that touch it are dispatched to rules (`dot_general`, `gather`,
slicing...) that compute without building the full weight. This module owns:

- `TypedWeight`: the base class. Its `default` rule is quax's fallback for a primitive with no rule; it
  materialises the weight, but never silently: it warns once per (primitive, type), naming both.
- `apply(fn)`: the one wrapper under which any `fn(params, *args)` runs on typed weights.
- `dense(x)`: a typed weight's full array (a plain array passes through).
- rules shared by every typed weight: slicing and squeezing the leading *stack* axes (weights stacked
  over layers for `jax.lax.scan`, indexed one layer at a time) and transposition (a lazy view, so that
  `x @ w.T` stays a rule-driven `dot_general`).
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import quax
from jax import lax
from jaxtyping import ArrayLike

F = TypeVar("F", bound=Callable[..., Any])

_warned: set[tuple[str, str]] = set()


def apply(fn: F) -> F:
    """`fn` made to understand typed weights: call it as `apply(fn)(params, *args)`.

    This is `quax.quaxify`; jit, grad and vmap compose around it as usual (put `jax.jit` outside).

    Args:
      fn: any function of arrays, e.g. `apply_fn(params, *inputs)` or a loss.

    Returns:
      `fn` taking typed weights (LoRA, Int8, NF4, W8A8...) wherever it took arrays.
    """
    return quax.quaxify(fn)


def is_typed(x: Any) -> bool:
    """Whether a leaf is a typed weight.

    Args:
      x: a params leaf.

    Returns:
      True for a `TypedWeight` (LoRA, quantized, masked...), False for a plain array or anything else.
    """
    return isinstance(x, TypedWeight)


def dense(x: Any) -> Any:
    """The full array a typed weight stands for.

    Args:
      x: a typed weight, or a plain array.

    Returns:
      The materialised array (LoRA merged, quantized values dequantized); a plain array unchanged.
    """
    return x.materialise() if isinstance(x, quax.Value) else x


# For tree-level functions called eagerly (merge, dequantize): one compiled program per (type, shapes)
# instead of compiling each small op of the dequantization for each distinct shape.
dense_compiled = jax.jit(dense)


def warn_materialise(primitive: str, weight: "TypedWeight") -> None:
    """Warn, once per (primitive, weight type), that a full weight is being built."""
    key = (primitive, type(weight).__name__)
    if key in _warned:
        return
    _warned.add(key)
    aval = weight.aval()
    warnings.warn(
        f"leanjax.transforms: no rule covers `{primitive}` on {type(weight).__name__} here; materialising "
        f"the full {aval.str_short()} weight. Register one with `quax.register(jax.lax.{primitive}_p)` "
        "or avoid the operation.",
        stacklevel=2,
    )


class TypedWeight(quax.ArrayValue):
    """Base of leanjax's typed weights.

    Subclasses hold only arrays (or nested typed weights) as pytree children and keep static metadata
    that does not change when a leading axis is added or removed: a weight stacked over layers and the
    per-layer slice `lax.scan` hands its body are the same type with the same statics.
    """

    @staticmethod
    def default(primitive, values: Sequence[Any], params: dict[str, Any]):
        for v in values:
            if isinstance(v, TypedWeight):
                warn_materialise(primitive.name, v)
        return primitive.bind(*(dense(v) for v in values), **params)

    @property
    @abc.abstractmethod
    def stack_ndim(self) -> int:
        """How many leading axes every array leaf shares with the weight (layers stacked for scan)."""

    @abc.abstractmethod
    def trainable_mask(self) -> "TypedWeight":
        """The same structure with a bool per array leaf: True for the leaves an optimizer trains."""


def frozen(x: Any) -> Any:
    """A trainable mask of all False for `x` (a typed weight or an array)."""
    return jax.tree.map(lambda _: False, x)


# --- Leading-axis slicing: per-layer views of stacked weights -------------------------------------------
# Indexing `w[i]` of a stacked weight lowers to (dynamic_)slice then squeeze of the leading axis. Every
# array leaf of a typed weight carries the same leading stack axes, so these apply leaf by leaf, and the
# result is again a typed weight of the same type (one layer of it).


def _full_after(n: int, shape, start, limit, strides) -> bool:
    """Whether a slice leaves every axis from `n` on whole."""
    return all(start[d] == 0 and limit[d] == shape[d] for d in range(n, len(shape))) and (
        strides is None or all(s == 1 for s in strides[n:]))


@quax.register(lax.slice_p)
def _slice(operand: TypedWeight, *, start_indices, limit_indices, strides):
    n = operand.stack_ndim
    if not _full_after(n, operand.shape, start_indices, limit_indices, strides):
        return TypedWeight.default(lax.slice_p, (operand,), dict(
            start_indices=start_indices, limit_indices=limit_indices, strides=strides))

    def one(leaf):
        return lax.slice_p.bind(
            leaf,
            start_indices=(*start_indices[:n], *(0,) * (leaf.ndim - n)),
            limit_indices=(*limit_indices[:n], *leaf.shape[n:]),
            strides=None if strides is None else (*strides[:n], *(1,) * (leaf.ndim - n)),
        )

    return jax.tree.map(one, operand)


@quax.register(lax.dynamic_slice_p)
def _dynamic_slice(operand: TypedWeight, *starts: ArrayLike, slice_sizes):
    n = operand.stack_ndim
    if tuple(slice_sizes[n:]) != tuple(operand.shape[n:]) or len(starts) != operand.ndim:
        return TypedWeight.default(lax.dynamic_slice_p, (operand, *starts), dict(slice_sizes=slice_sizes))
    zero = jnp.zeros((), jnp.asarray(starts[0]).dtype)

    def one(leaf):
        return lax.dynamic_slice_p.bind(
            leaf, *starts[:n], *(zero,) * (leaf.ndim - n), slice_sizes=(*slice_sizes[:n], *leaf.shape[n:]))

    return jax.tree.map(one, operand)


@quax.register(lax.squeeze_p)
def _squeeze(operand: TypedWeight, *, dimensions):
    if not all(d < operand.stack_ndim for d in dimensions):
        return TypedWeight.default(lax.squeeze_p, (operand,), dict(dimensions=dimensions))
    return jax.tree.map(lambda leaf: lax.squeeze_p.bind(leaf, dimensions=dimensions), operand)


# --- Transposition: a lazy view ------------------------------------------------------------------------


class Transposed(TypedWeight):
    """`weight` with its axes permuted, kept lazy so a later `dot_general` folds the permutation into
    its dimension numbers (`x @ table.T` for a tied head never builds the table). Exists only inside a
    trace; params never hold one."""

    weight: TypedWeight
    permutation: tuple[int, ...] = eqx.field(static=True)

    def aval(self):
        inner = self.weight.aval()
        return jax.core.ShapedArray(tuple(inner.shape[p] for p in self.permutation), inner.dtype)

    def materialise(self):
        return jnp.transpose(dense(self.weight), self.permutation)

    @property
    def stack_ndim(self) -> int:
        return 0

    def trainable_mask(self):
        raise TypeError("Transposed is a view inside a trace; params never hold one")


@quax.register(lax.transpose_p)
def _transpose(operand: TypedWeight, *, permutation):
    if isinstance(operand, Transposed):
        composed = tuple(operand.permutation[p] for p in permutation)
        identity = composed == tuple(range(len(composed)))
        return operand.weight if identity else Transposed(operand.weight, composed)
    return Transposed(operand, tuple(permutation))


def _untranspose_dims(dims, side: int, permutation: Sequence[int]):
    """Dimension numbers for the same `dot_general` against the un-permuted operand on `side` (0/1)."""
    contract, batch = [list(x) for x in dims[0]], [list(x) for x in dims[1]]
    contract[side] = [permutation[d] for d in contract[side]]
    batch[side] = [permutation[d] for d in batch[side]]
    return (tuple(map(tuple, contract)), tuple(map(tuple, batch)))


def _free_dims(ndim: int, dims, side: int) -> list[int]:
    used = set(dims[0][side]) | set(dims[1][side])
    return [d for d in range(ndim) if d not in used]


@quax.register(lax.dot_general_p)
def _dot_transposed_rhs(lhs: ArrayLike, rhs: Transposed, *, dimension_numbers, **params):
    return _dot_transposed(lhs, rhs, 1, dimension_numbers, params)


@quax.register(lax.dot_general_p)
def _dot_transposed_lhs(lhs: Transposed, rhs: ArrayLike, *, dimension_numbers, **params):
    return _dot_transposed(lhs, rhs, 0, dimension_numbers, params)


def _dot_transposed(lhs, rhs, side: int, dims, params):
    view = (lhs, rhs)[side]
    perm = view.permutation
    operands = [lhs, rhs]
    operands[side] = view.weight
    out = quax.quaxify(lax.dot_general_p.bind)(
        *operands, dimension_numbers=_untranspose_dims(dims, side, perm), **params)
    # dot_general orders each operand's free axes as they appear in it: the view's free axes come out
    # in the inner weight's order and are put back in the view's order.
    view_free = _free_dims(len(perm), dims, side)
    inner_order = sorted(view_free, key=lambda d: perm[d])
    if inner_order == view_free:
        return out
    offset = len(dims[1][0]) + (len(_free_dims(jnp.ndim(lhs), dims, 0)) if side else 0)
    order = list(range(out.ndim))
    order[offset:offset + len(view_free)] = [offset + inner_order.index(d) for d in view_free]
    return jnp.transpose(out, order)

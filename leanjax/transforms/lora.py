"""Low-rank adapters as typed weights: LoRA, rsLoRA and DoRA.

- LoRA (Hu et al. 2021, arXiv:2106.09685): `W = W0 + (alpha / r) * A @ B` with `W0` frozen, `A` random
  and `B = 0` at init, so training starts from the base model.
- rsLoRA (Kalajdzievski 2023, arXiv:2312.03732): scaling `alpha / sqrt(r)`, which keeps the adapter's
  learning stable as the rank grows.
- DoRA (Liu et al. 2024, arXiv:2402.09353): `W = m * V / ||V||_c` with `V = W0 + s * A @ B` and a
  trainable magnitude `m` per output column, initialised to `||W0||_c`. As the paper (Sec. 4.3) and HF
  PEFT do, the norm is treated as a constant in the backward pass.

A weight of shape `S + I + O` (`S`: stack axes of layers stacked for `lax.scan`; `I`: the `in_axes`
contracted with the input; `O`: the `out_axes`) gets `a: S + I + (r,)` and `b: S + (r,) + O`; `A` is
drawn as HF PEFT does (Kaiming-uniform, bound `1/sqrt(fan_in)`). The base may itself be a typed weight
(a quantized base is QLoRA): the rules reach it through quax's dispatch again.

Rules: `dot_general` computes `x . W0 + s * (x . A) . B`, never `A @ B` (DoRA then rescales the output
columns; its norms need the layer's merged weight, built next to the matmul and held constant); `gather`
(a LoRA'd embedding) gathers rows of `W0` and `A`; casts apply to each part. Slicing a stacked LoRA
weight gives one layer's LoRA weight (see `typed`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import string
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import quax
from jax import lax
from jaxtyping import ArrayLike

from leanjax.transforms.select import Targets, select
from leanjax.transforms.typed import TypedWeight, dense, dense_compiled, frozen, is_typed

VARIANTS = ("lora", "rslora", "dora")


class LoRA(TypedWeight):
    """`base + scale * a @ b` (contracting the rank axis), optionally DoRA-normalised per column."""

    base: Any  # a jax.Array or a TypedWeight
    a: jax.Array
    b: jax.Array
    magnitude: jax.Array | None = None  # DoRA only: shape S + O
    key: jax.Array | None = None  # dropout key, shape S; set per step by `with_dropout_rng`
    alpha: float = eqx.field(static=True, default=1.0)
    rslora: bool = eqx.field(static=True, default=False)
    dropout: float = eqx.field(static=True, default=0.0)

    @property
    def rank(self) -> int:
        return self.a.shape[-1]

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @property
    def n_stack(self) -> int:
        # Stacking adds the same leading axes to base, a and b, so the split is derived from the ranks
        # (a: S+I+1, b: S+1+O, base: S+I+O) rather than stored: a stored count would be wrong for the
        # per-layer slice that lax.scan hands its body.
        return self.a.ndim + self.b.ndim - 2 - len(self.base.shape)

    @property
    def n_in(self) -> int:
        return self.a.ndim - 1 - self.n_stack

    @property
    def stack_ndim(self) -> int:
        return min(self.n_stack, self.base.stack_ndim) if is_typed(self.base) else self.n_stack

    def aval(self):
        return jax.core.ShapedArray(self.base.shape, self.base.dtype)

    def _subscripts(self) -> tuple[str, str, str]:
        """Einsum letters of the S, I and O axes ('r' is the rank)."""
        letters = (c for c in string.ascii_letters if c != "r")
        s = "".join(next(letters) for _ in range(self.n_stack))
        i = "".join(next(letters) for _ in range(self.n_in))
        o = "".join(next(letters) for _ in range(len(self.base.shape) - self.n_stack - self.n_in))
        return s, i, o

    def delta(self) -> jax.Array:
        """`scale * a @ b`: the full-size update (for merging; the rules never build it)."""
        s, i, o = self._subscripts()
        return self.scale * jnp.einsum(f"{s}{i}r,{s}r{o}->{s}{i}{o}", self.a, self.b)

    def column_norm(self, merged: jax.Array) -> jax.Array:
        """`||merged||_c`: the norm over the input axes of each output column (shape S + O)."""
        s, i, o = self._subscripts()
        return jnp.sqrt(jnp.einsum(f"{s}{i}{o},{s}{i}{o}->{s}{o}", merged, merged))

    def column_ratio(self, merged: jax.Array) -> jax.Array:
        """DoRA's `m / ||V||_c` (shape S + O), the norm held constant for the gradient."""
        return self.magnitude / lax.stop_gradient(self.column_norm(merged)).astype(self.magnitude.dtype)

    def materialise(self):
        merged = dense(self.base) + self.delta().astype(self.dtype)
        if self.magnitude is None:
            return merged
        s, i, o = self._subscripts()
        return jnp.einsum(f"{s}{i}{o},{s}{o}->{s}{i}{o}", merged, self.column_ratio(merged))

    def replace_base(self, base) -> "LoRA":
        return dataclasses.replace(self, base=base)

    def trainable_mask(self):
        return dataclasses.replace(
            self, base=frozen(self.base), a=True, b=True,
            magnitude=None if self.magnitude is None else True, key=None if self.key is None else False)


def _kaiming_a(key, shape, fan_in, dtype):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def lora(params: Any, targets: Targets, *, rank: int, key: jax.Array, alpha: float | None = None,
         variant: str = "lora", dropout: float = 0.0, in_axes: int = 1, out_axes: int = 1) -> Any:
    """Wrap the targeted leaves of `params` in LoRA weights (Hu et al. 2021, arXiv:2106.09685).

    A leaf of shape `S + I + O` with `len(I) = in_axes`, `len(O) = out_axes` treats the leading `S` axes as
    stacked layers (Flax kernels are `[in, out]`; scanned models stack them as `[layers, in, out]`).

    Args:
      params: a params tree (a targeted quantized leaf becomes the frozen base: QLoRA).
      targets: a regex (`re.fullmatch` on '/'-joined paths) or `fn(path, leaf) -> bool`.
      rank: the adapters' rank r.
      key: initialises `a` (random); `b` starts at zero, so the model is unchanged at first.
      alpha: the scale's numerator; default `rank`.
      variant: 'lora' (`alpha/r`), 'rslora' (`alpha/sqrt(r)`) or 'dora' (LoRA scaling plus a trained
        magnitude, arXiv:2402.09353).
      dropout: dropout on the adapter's input, applied when a key is set with `with_dropout_rng`.
      in_axes: trailing input axes of each targeted leaf.
      out_axes: trailing output axes.

    Returns:
      `params` with the targeted leaves replaced by `LoRA` typed weights.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown LoRA variant {variant!r}: use one of {VARIANTS}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    counter = itertools.count()

    def one(path: str, leaf):
        if isinstance(leaf, LoRA):
            raise TypeError(f"{path}: already has a LoRA adapter")
        shape, dtype = tuple(leaf.shape), leaf.dtype
        n_stack = len(shape) - in_axes - out_axes
        if n_stack < 0 or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{path}: cannot add LoRA to a {dtype} weight of shape {shape} with "
                             f"in_axes={in_axes}, out_axes={out_axes}")
        stack, fan_in, out = shape[:n_stack], shape[n_stack:n_stack + in_axes], shape[n_stack + in_axes:]
        a_key = jax.random.fold_in(key, next(counter))
        a = _kaiming_a(a_key, (*stack, *fan_in, rank), math.prod(fan_in), dtype)
        b = jnp.zeros((*stack, rank, *out), dtype)
        weight = LoRA(leaf, a, b, alpha=float(rank if alpha is None else alpha),
                      rslora=variant == "rslora", dropout=float(dropout))
        if variant == "dora":
            magnitude = weight.column_norm(dense_compiled(leaf)).astype(dtype)
            weight = dataclasses.replace(weight, magnitude=magnitude)
        return weight

    return select(params, targets, one)


def with_dropout_rng(params: Any, rng: jax.Array) -> Any:
    """Give every LoRA weight with dropout its own key (one per stacked layer); call inside the loss.

    Args:
      params: a params tree with LoRA weights.
      rng: the step's dropout key.

    Returns:
      `params` whose LoRA weights with `dropout > 0` carry keys (the others unchanged).
    """
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    counter = itertools.count()

    def one(x):
        if not isinstance(x, LoRA) or x.dropout == 0.0:
            return x
        k = jax.random.fold_in(rng, next(counter))
        stack = x.a.shape[:x.n_stack]
        return dataclasses.replace(x, key=jax.random.split(k, stack) if stack else k)

    return jax.tree.map(one, params, is_leaf=is_typed)


def unmerge(merged: Any, like: Any) -> Any:
    """LoRA weights recovered from merged arrays: each LoRA leaf of `like` gets `base = merged - delta`.

    DoRA cannot be unmerged: the merged weight does not determine the column norms of `W0 + s*A@B`.

    Args:
      merged: plain arrays, e.g. `merge(params)` or weights read back from an exported checkpoint.
      like: the LoRA params tree the adapters come from.

    Returns:
      `like`'s structure with each LoRA base replaced so that merging gives `merged` again.
    """

    def one(template, array):
        if not isinstance(template, LoRA):
            return array
        if template.magnitude is not None:
            raise ValueError("a merged DoRA weight does not determine its base; keep the base instead")
        return template.replace_base(array - template.delta().astype(array.dtype))

    return jax.tree.map(one, like, merged, is_leaf=is_typed)


# --- Rules ----------------------------------------------------------------------------------------------


def _adapter_input(x: jax.Array, w: LoRA) -> jax.Array:
    if w.key is None or w.dropout == 0.0:
        return x
    if w.key.ndim:
        raise ValueError(f"LoRA dropout on a stacked weight (key shape {w.key.shape}) must run per layer: "
                         "slice the layer first, e.g. inside jax.lax.scan")
    keep = jax.random.bernoulli(w.key, 1.0 - w.dropout, x.shape)
    return jnp.where(keep, x / (1.0 - w.dropout), 0).astype(x.dtype)


def _dot(x: jax.Array, w: LoRA, side: int, dims, params):
    """`dot_general` with the LoRA weight as operand `side` (0: lhs, 1: rhs) and the array `x` the other."""
    (contract, batch) = dims
    # Name every axis with a letter, as an einsum would, then contract x with whichever factor holds
    # W's contracted axes first: (x . A) . B costs O(r) per output, A @ B would cost a full weight.
    letters = (c for c in string.ascii_letters if c != "r")
    x_l, w_l = [None] * x.ndim, [None] * w.ndim
    for xd, wd in zip((*batch[1 - side], *contract[1 - side]), (*batch[side], *contract[side])):
        x_l[xd] = w_l[wd] = next(letters)
    x_l = [c or next(letters) for c in x_l]
    w_l = [c or next(letters) for c in w_l]
    lhs_l, rhs_l = (w_l, x_l) if side == 0 else (x_l, w_l)
    out_l = [lhs_l[d] for d in batch[0]]
    out_l += [c for d, c in enumerate(lhs_l) if d not in (*batch[0], *contract[0])]
    out_l += [c for d, c in enumerate(rhs_l) if d not in (*batch[1], *contract[1])]

    ns, ni = w.n_stack, w.n_in
    s_l, i_l, o_l = w_l[:ns], w_l[ns:ns + ni], w_l[ns + ni:]
    if w.magnitude is not None and not set(s_l + o_l) <= set(out_l):
        # DoRA rescales W's output columns; with those contracted away there is no output to rescale.
        return TypedWeight.default(lax.dot_general_p, (x, w)[:: 1 if side else -1],
                                   dict(dimension_numbers=dims, **params))
    a_l, b_l = [*s_l, *i_l, "r"], [*s_l, "r", *o_l]
    contracted = {w_l[d] for d in contract[side]}
    operands = [x, x]
    operands[side] = w.base
    base_out = quax.quaxify(lax.dot_general_p.bind)(*operands, dimension_numbers=dims, **params)
    (f1, f1_l), (f2, f2_l) = ((w.a, a_l), (w.b, b_l))[:: 1 if not contracted & set(o_l) else -1]
    keep = set(out_l) | set(f2_l)
    t_l = [c for c in dict.fromkeys(x_l + f1_l) if c in keep]
    kw = dict(precision=params.get("precision"), preferred_element_type=params.get("preferred_element_type"))
    t = jnp.einsum(f"{''.join(x_l)},{''.join(f1_l)}->{''.join(t_l)}", _adapter_input(x, w), f1, **kw)
    low = jnp.einsum(f"{''.join(t_l)},{''.join(f2_l)}->{''.join(out_l)}", t, f2, **kw)
    out = base_out + (w.scale * low).astype(base_out.dtype)
    if w.magnitude is None:
        return out
    ratio = w.column_ratio(dense(w.base) + w.delta().astype(w.dtype))
    so = "".join(s_l + o_l)
    return jnp.einsum(f"{''.join(out_l)},{so}->{''.join(out_l)}", out, ratio.astype(out.dtype))


@quax.register(lax.dot_general_p)
def _dot_rhs(lhs: ArrayLike, rhs: LoRA, *, dimension_numbers, **params):
    return _dot(lhs, rhs, 1, dimension_numbers, params)


@quax.register(lax.dot_general_p)
def _dot_lhs(lhs: LoRA, rhs: ArrayLike, *, dimension_numbers, **params):
    return _dot(rhs, lhs, 0, dimension_numbers, params)


@quax.register(lax.gather_p)
def _gather(operand: LoRA, indices: ArrayLike, *, dimension_numbers, slice_sizes, **params):
    """Rows of a LoRA'd embedding table `[vocab, features]`: `W0[ids] + s * A[ids] @ B`."""
    dn = dimension_numbers
    batch_ndim = indices.ndim - 1
    is_row_take = (
        operand.n_stack == 0 and operand.n_in == 1 and dn.collapsed_slice_dims == (0,)
        and dn.start_index_map == (0,) and not dn.operand_batching_dims
        and tuple(slice_sizes) == (1, *operand.shape[1:])
        and tuple(dn.offset_dims) == tuple(range(batch_ndim, batch_ndim + operand.ndim - 1)))
    if not is_row_take:
        return TypedWeight.default(lax.gather_p, (operand, indices), dict(
            dimension_numbers=dn, slice_sizes=slice_sizes, **params))
    base = quax.quaxify(lax.gather_p.bind)(operand.base, indices, dimension_numbers=dn,
                                          slice_sizes=slice_sizes, **params)
    a = lax.gather_p.bind(operand.a, indices, dimension_numbers=dn._replace(offset_dims=(batch_ndim,)),
                          slice_sizes=(1, operand.rank), **params)
    rows = base + (operand.scale * jnp.tensordot(a, operand.b, 1)).astype(base.dtype)
    if operand.magnitude is None:
        return rows
    return rows * operand.column_ratio(dense(operand.base) + operand.delta().astype(operand.dtype))


@quax.register(lax.convert_element_type_p)
def _convert(operand: LoRA, **params):
    cast = lambda x: None if x is None else lax.convert_element_type_p.bind(x, **params)  # noqa: E731
    return dataclasses.replace(
        operand, base=quax.quaxify(lax.convert_element_type_p.bind)(operand.base, **params),
        a=cast(operand.a), b=cast(operand.b), magnitude=cast(operand.magnitude))

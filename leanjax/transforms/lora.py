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
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.extend.core
import jax.numpy as jnp
import quax
from jax import lax
from jaxtyping import ArrayLike

from leanjax.transforms.layout import Layout
from leanjax.transforms.layout import resolve as resolve_layout
from leanjax.transforms.select import Targets, select
from leanjax.transforms.typed import TypedWeight, dense, dense_compiled, frozen, is_typed
from leanjax.trees import path_str

VARIANTS = ("lora", "rslora", "dora")


class LoRA(TypedWeight):
    """`base + scale * a @ b` (contracting the rank axis), optionally DoRA-normalised per column.

    `axes` is the weight's layout without its stack axes ('io', 'oi', 'ioo'... see `layout`): `a` holds
    `S + I + (r,)` and `b` `S + (r,) + O`, with `I`/`O` the input/output axes in the order they appear.
    A multi-adapter weight (`stack_adapters`) has `n_adapters > 0` and an adapter axis after `S` in `a`,
    `b`; `ids` (shape `S + (batch,)`, set by `with_adapter_ids`) picks each request's adapter.
    """

    base: Any  # a jax.Array or a TypedWeight
    a: jax.Array
    b: jax.Array
    magnitude: jax.Array | None = None  # DoRA only: shape S + O
    key: jax.Array | None = None  # dropout key, shape S; set per step by `with_dropout_rng`
    ids: jax.Array | None = None  # adapter index per request, shape S + (batch,); multi-adapter only
    alpha: float = eqx.field(static=True, default=1.0)
    rslora: bool = eqx.field(static=True, default=False)
    dropout: float = eqx.field(static=True, default=0.0)
    axes: str = eqx.field(static=True, default="io")
    n_adapters: int = eqx.field(static=True, default=0)

    @property
    def rank(self) -> int:
        return self.a.shape[-1]

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @property
    def n_stack(self) -> int:
        # Derived, not stored: the per-layer slice lax.scan hands its body has the same statics.
        return len(self.base.shape) - len(self.axes)

    @property
    def n_in(self) -> int:
        return self.axes.count("i")

    @property
    def layout(self) -> str:
        return "s" * self.n_stack + self.axes

    @property
    def stack_ndim(self) -> int:
        return min(self.n_stack, self.base.stack_ndim) if is_typed(self.base) else self.n_stack

    def aval(self):
        return jax.core.ShapedArray(self.base.shape, self.base.dtype)

    def _subscripts(self) -> tuple[str, str, str, str]:
        """Einsum letters of the S, I and O axes and of the whole weight ('r' is the rank)."""
        letters = (c for c in string.ascii_letters if c not in "rnq")
        s = "".join(next(letters) for _ in range(self.n_stack))
        w = [next(letters) for _ in self.axes]
        i = "".join(c for c, kind in zip(w, self.axes) if kind == "i")
        o = "".join(c for c, kind in zip(w, self.axes) if kind == "o")
        return s, i, o, s + "".join(w)

    def _single(self, what: str) -> None:
        if self.n_adapters:
            raise ValueError(f"{what} needs one adapter; this weight stacks {self.n_adapters}: use "
                             "with_adapter_ids and a matmul, or unstack the adapters")

    def delta(self) -> jax.Array:
        """`scale * a @ b` in the weight's layout: the full-size update (for merging; rules never build it)."""
        self._single("delta")
        s, i, o, w = self._subscripts()
        return self.scale * jnp.einsum(f"{s}{i}r,{s}r{o}->{w}", self.a, self.b)

    def column_norm(self, merged: jax.Array) -> jax.Array:
        """`||merged||_c`: the norm over the input axes of each output column (shape S + O)."""
        s, _, o, w = self._subscripts()
        return jnp.sqrt(jnp.einsum(f"{w},{w}->{s}{o}", merged, merged))

    def column_ratio(self, merged: jax.Array) -> jax.Array:
        """DoRA's `m / ||V||_c` (shape S + O), the norm held constant for the gradient."""
        return self.magnitude / lax.stop_gradient(self.column_norm(merged)).astype(self.magnitude.dtype)

    def merged_column_norm(self) -> jax.Array:
        """`||W0 + s A B||_c` without building `A B`, held constant (DoRA's norm, paper Sec. 4.3):
        `||W0||_c^2 + 2 s (B * (A^T W0))_c + s^2 (B * (A^T A) B)_c`. Costs one pass over `W0` and an
        `[r, out]` matmul, where `dense(W0) + delta()` would build (and hold) a second full-size weight.
        Reductions are sums of products, not einsums: XLA on CPU lowers an einsum that contracts nothing
        to a slow batched matmul."""
        s_, i, o, w = self._subscripts()
        ns = self.n_stack
        base = lax.stop_gradient(dense(self.base)).astype(jnp.float32)
        a, b = (lax.stop_gradient(x).astype(jnp.float32) for x in (self.a, self.b))
        sq = jnp.sum(base * base, axis=tuple(ns + k for k, kind in enumerate(self.axes) if kind == "i"))
        cross = jnp.sum(b * jnp.einsum(f"{s_}{i}r,{w}->{s_}r{o}", a, base), axis=ns)
        gram = jnp.einsum(f"{s_}{i}r,{s_}{i}q->{s_}rq", a, a)
        low = jnp.sum(b * jnp.einsum(f"{s_}rq,{s_}q{o}->{s_}r{o}", gram, b), axis=ns)
        return jnp.sqrt(jnp.maximum(sq + 2 * self.scale * cross + self.scale ** 2 * low, 0))

    def materialise(self):
        merged = dense(self.base) + self.delta().astype(self.dtype)
        if self.magnitude is None:
            return merged
        s, _, o, w = self._subscripts()
        return jnp.einsum(f"{w},{s}{o}->{w}", merged, self.column_ratio(merged))

    def replace_base(self, base) -> "LoRA":
        return dataclasses.replace(self, base=base)

    def trainable_mask(self):
        return dataclasses.replace(
            self, base=frozen(self.base), a=True, b=True,
            magnitude=None if self.magnitude is None else True, key=None if self.key is None else False,
            ids=None if self.ids is None else False)


def _kaiming_a(key, shape, fan_in, dtype):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def lora(params: Any, targets: Targets, *, rank: int, key: jax.Array, alpha: float | None = None,
         variant: str = "lora", dropout: float = 0.0, layout: Layout = None) -> Any:
    """Wrap the targeted leaves of `params` in LoRA weights.

    Args:
      params: any pytree of arrays (typed weights count as leaves: a quantized base gives QLoRA).
      targets: a regex (`re.fullmatch` on '/'-joined paths) or `fn(path, leaf) -> bool`.
      rank: the adapters' rank r.
      key: PRNG key for `A` (Kaiming-uniform with bound `1/sqrt(fan_in)`, as HF PEFT; `B = 0`).
      alpha: scaling numerator, default `rank`.
      variant: 'lora' (`alpha/r`), 'rslora' (`alpha/sqrt(r)`) or 'dora' (LoRA scaling plus a trained
        magnitude per output column).
      dropout: rate on the adapter's input, active when a key is set with `with_dropout_rng`.
      layout: the weights' axes (see `leanjax.transforms.layout`): 'io' `[in, out]` (the default for 2-D),
        'oi' `[out, in]` (Equinox/PyTorch), 'sio' (stacked layers), 'ioo' `[embed, heads, head_dim]`,
        'oio' (Gemma q)... or `fn(path, leaf) -> layout`. Required for 3-D and larger weights.

    Returns:
      `params` with each targeted leaf a `LoRA`: `a` `S + I + (r,)`, `b` `S + (r,) + O` (adapters over
      the flattened input and output axes), the fan-in the product of the input axes.
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
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{path}: cannot add LoRA to a {dtype} weight of shape {shape}")
        n_stack, axes = resolve_layout(layout, path, leaf)
        stack = shape[:n_stack]
        fan_in = tuple(n for n, kind in zip(shape[n_stack:], axes) if kind == "i")
        out = tuple(n for n, kind in zip(shape[n_stack:], axes) if kind == "o")
        a_key = jax.random.fold_in(key, next(counter))
        a = _kaiming_a(a_key, (*stack, *fan_in, rank), math.prod(fan_in), dtype)
        b = jnp.zeros((*stack, rank, *out), dtype)
        weight = LoRA(leaf, a, b, alpha=float(rank if alpha is None else alpha),
                      rslora=variant == "rslora", dropout=float(dropout), axes=axes)
        if variant == "dora":
            magnitude = weight.column_norm(dense_compiled(leaf)).astype(dtype)
            weight = dataclasses.replace(weight, magnitude=magnitude)
        return weight

    return select(params, targets, one)


# Setting a field of a LoRA weight must also work inside `apply(fn)`, where `fn` sees quax tracers that
# wrap the weights rather than the weights themselves: the update is a primitive, which quax dispatches
# to the rule below with the LoRA value unwrapped (the tracer is rewrapped around the result).
_set_field_p = jax.extend.core.Primitive("leanjax_lora_set_field")


@quax.register(_set_field_p)
def _set_field(weight: LoRA, value: ArrayLike, *, field: str):
    return dataclasses.replace(weight, **{field: value})


def _lora_of(x) -> LoRA | None:
    """The LoRA weight `x` is, or wraps as a tracer inside `apply`; else None."""
    if isinstance(x, LoRA):
        return x
    value = getattr(x, "value", None) if isinstance(x, jax.core.Tracer) else None
    return value if isinstance(value, LoRA) else None


def _set(x, w: LoRA, field: str, value: jax.Array):
    if x is w:
        return dataclasses.replace(w, **{field: value})
    return _set_field_p.bind(x, value, field=field)


def _map_lora(params: Any, fn) -> Any:
    """`fn(x, lora)` on every LoRA weight of `params` (wrapped or not), other leaves unchanged."""
    def one(x):
        w = _lora_of(x)
        return x if w is None else fn(x, w)

    return jax.tree.map(one, params, is_leaf=lambda x: is_typed(x) or _lora_of(x) is not None)


def with_dropout_rng(params: Any, rng: jax.Array) -> Any:
    """Give every LoRA weight with dropout its own key (one per stacked layer).

    Call it inside the loss, outside or inside a function wrapped by `apply`; both work.

    Args:
      params: a tree holding LoRA weights.
      rng: a PRNG key (new-style or raw uint32), different at each step.

    Returns:
      `params` with the keys set; weights without dropout are unchanged.
    """
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    counter = itertools.count()

    def one(x, w: LoRA):
        if w.dropout == 0.0:
            return x
        k = jax.random.fold_in(rng, next(counter))
        stack = w.a.shape[:w.n_stack]
        return _set(x, w, "key", jax.random.split(k, stack) if stack else k)

    return _map_lora(params, one)


def stack_adapters(trees: Sequence[Any]) -> Any:
    """Many LoRA adapters over one base as one tree, to serve a batch where each request has its own.

    Args:
      trees: params trees with the same structure and LoRA weights at the same leaves, the same base
        (the first tree's is kept; it may be quantized and stacked over layers) and the same rank.

    Returns:
      the first tree with each LoRA weight's `a`, `b` stacked along a new adapter axis after the stack
      axes (`S + (N,) + I + (r,)`). Select each request's adapter with `with_adapter_ids`.
    """
    if not trees:
        raise ValueError("stack_adapters needs at least one tree")

    def one(path, *ws):
        if not isinstance(ws[0], LoRA):
            return ws[0]
        first = ws[0]
        if first.n_adapters:
            raise ValueError(f"{path}: already stacks {first.n_adapters} adapters")
        for k, w in enumerate(ws):
            if not isinstance(w, LoRA):
                raise ValueError(f"{path}: tree {k} has no LoRA weight here")
            if w.magnitude is not None:
                raise ValueError(f"{path}: stacking DoRA adapters is not supported (merge them instead)")
            if (w.a.shape, w.b.shape, w.alpha, w.rslora, w.axes) != (
                    first.a.shape, first.b.shape, first.alpha, first.rslora, first.axes):
                raise ValueError(f"{path}: tree {k}'s adapter (a {w.a.shape}, b {w.b.shape}, alpha {w.alpha}, "
                                 f"layout {w.layout!r}) differs from tree 0's (a {first.a.shape}, b "
                                 f"{first.b.shape}, alpha {first.alpha}, layout {first.layout!r})")
        n = first.n_stack
        return dataclasses.replace(first, a=jnp.stack([w.a for w in ws], n), b=jnp.stack([w.b for w in ws], n),
                                   key=None, n_adapters=len(ws))

    return jax.tree_util.tree_map_with_path(lambda p, *ws: one(path_str(p), *ws), *trees, is_leaf=is_typed)


def with_adapter_ids(params: Any, ids: jax.Array) -> Any:
    """Pick adapter `ids[b]` for request `b` of the batch in every multi-adapter LoRA weight.

    Works outside or inside `apply`. The activations' leading axis must be the request axis.

    Args:
      params: a tree from `stack_adapters`.
      ids: int array `[batch]`, values in `[0, N)`.

    Returns:
      `params` with the ids set (broadcast over stacked layers, so `lax.scan` slices them per layer).
    """
    ids = jnp.asarray(ids)
    if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"adapter ids must be a 1-D int array [batch], got {ids.dtype}{list(ids.shape)}")
    found = []

    def one(x, w: LoRA):
        if not w.n_adapters:
            return x
        found.append(w)
        stack = w.a.shape[:w.n_stack]
        return _set(x, w, "ids", jnp.broadcast_to(ids, (*stack, ids.shape[0])))

    out = _map_lora(params, one)
    if not found:
        raise ValueError("no multi-adapter LoRA weights in params: build them with stack_adapters")
    return out


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


def _take_rows(f: jax.Array, ids: jax.Array, n_stack: int) -> jax.Array:
    """`f[..., ids[..., b], ...]` along the adapter axis `n_stack`, per stacked layer: `S + (batch,) + rest`."""
    idx = ids.reshape(*ids.shape, *(1,) * (f.ndim - n_stack - 1))
    return jnp.take_along_axis(f, idx, axis=n_stack, mode="clip")


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

    ns = w.n_stack
    s_l = w_l[:ns]
    i_l = [c for c, kind in zip(w_l[ns:], w.axes) if kind == "i"]
    o_l = [c for c, kind in zip(w_l[ns:], w.axes) if kind == "o"]
    if w.magnitude is not None and not set(s_l + o_l) <= set(out_l):
        # DoRA rescales W's output columns; with those contracted away there is no output to rescale.
        return TypedWeight.default(lax.dot_general_p, (x, w)[:: 1 if side else -1],
                                   dict(dimension_numbers=dims, **params))
    a, b = w.a, w.b
    a_l, b_l = [*s_l, *i_l, "r"], [*s_l, "r", *o_l]
    if w.n_adapters:
        # Each request (x's leading axis) uses its own adapter: gather its A and B rows, a batch of small
        # matmuls next to the one shared base matmul.
        if w.ids is None or w.ids.ndim != ns + 1:
            raise ValueError(f"a weight stacking {w.n_adapters} adapters needs with_adapter_ids(params, ids)")
        if x_l[0] not in out_l or x.shape[0] != w.ids.shape[-1]:
            raise ValueError(f"adapter ids for {w.ids.shape[-1]} requests; the activations' leading axis "
                             f"(shape {x.shape}) must be that request axis")
        a, b = (_take_rows(f, w.ids, ns) for f in (w.a, w.b))
        a_l, b_l = [*s_l, x_l[0], *i_l, "r"], [*s_l, x_l[0], "r", *o_l]
    contracted = {w_l[d] for d in contract[side]}
    operands = [x, x]
    operands[side] = w.base
    base_out = quax.quaxify(lax.dot_general_p.bind)(*operands, dimension_numbers=dims, **params)
    (f1, f1_l), (f2, f2_l) = ((a, a_l), (b, b_l))[:: 1 if not contracted & set(o_l) else -1]
    keep = set(out_l) | set(f2_l)
    t_l = [c for c in dict.fromkeys(x_l + f1_l) if c in keep]
    kw = dict(precision=params.get("precision"), preferred_element_type=params.get("preferred_element_type"))
    t = jnp.einsum(f"{''.join(x_l)},{''.join(f1_l)}->{''.join(t_l)}", _adapter_input(x, w), f1, **kw)
    low = jnp.einsum(f"{''.join(t_l)},{''.join(f2_l)}->{''.join(out_l)}", t, f2, **kw)
    out = base_out + (w.scale * low).astype(base_out.dtype)
    if w.magnitude is None:
        return out
    ratio = w.magnitude / w.merged_column_norm().astype(w.magnitude.dtype)
    return out * _broadcast(ratio.astype(out.dtype), s_l + o_l, out_l)


def _broadcast(x: jax.Array, x_l: list[str], out_l: list[str]) -> jax.Array:
    """`x` (axes named `x_l`) transposed and reshaped to broadcast against an array with axes `out_l`:
    a plain multiply, where an einsum that contracts nothing lowers to a batched matmul."""
    order = sorted(range(len(x_l)), key=lambda d: out_l.index(x_l[d]))
    x = jnp.transpose(x, order)
    sizes = dict(zip([x_l[d] for d in order], x.shape))
    return x.reshape([sizes.get(c, 1) for c in out_l])


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
        operand.n_stack == 0 and operand.axes == "io" and not operand.n_adapters and dn.collapsed_slice_dims == (0,)
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

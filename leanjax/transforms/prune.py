"""Pruning masks: magnitude (per layer or global), N:M, structured units, and an optax wrapper that keeps
them, so any optimizer prunes and the masks checkpoint and resume with the optimizer state.

A *mask tree* has the structure of the params with a bool array (True = keep) at each pruned leaf and
`None` elsewhere. The pruned params themselves stay plain arrays holding zeros, so every model runs on
them unchanged; real savings come from `leanjax.transforms.compact` (structured units physically
removed) and `leanjax.transforms.sparse24` (2:4 weights stored as half the values plus 2-bit indices).

- `magnitude(targets, scope="layer"|"global")`: a *mask function* `(params, sparsity) -> masks` that
  drops the smallest-|w| fraction of each targeted leaf, or of all of them pooled (global).
- `nm_masks(params, targets, n=2, m=4)`: keep the `n` largest of every `m` consecutive weights along the
  contraction axis (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378).
- `polynomial_schedule(...)`: the gradual schedule of Zhu & Gupta 2017, "To prune, or not to prune",
  arXiv:1710.01878: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3.
- `prune_by_schedule(inner, schedule, mask_fn, update_every)`: an `optax.GradientTransformation` whose
  state holds the masks; every `update_every` steps in the schedule's window it recomputes them from the
  updated params, and after every step it re-applies them (masked gradients, pruned params held at 0).
  `keep_masks(inner, masks)` is the same with fixed masks (fine-tuning after one-shot or N:M pruning).
- `gradual_pruning(make_inner, mask_fn, ramp_steps)`: `prune_by_schedule` on Zhu & Gupta's schedule with the
  final sparsity an injected hyperparameter, so every target sparsity trains with one compiled step;
  `complete_masks(masks, other)` gives two mask trees the same pruned leaves, for the same reason.
- `report(params, masks=None)`: sparsity per layer and overall, from the zeros actually stored.

Structured units (neurons, conv channels, attention heads) are in `leanjax.transforms.compact`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from leanjax.transforms.select import Targets, leaves_with_paths, select

Masks = Any  # params-shaped: bool arrays at pruned leaves, None elsewhere
MaskFn = Callable[[Any, jax.Array], Masks]


def _is_none(x: Any) -> bool:
    return x is None


def map_masked(fn: Callable[[jax.Array, Any], Any], masks: Masks, tree: Any) -> Any:
    """`fn(mask, leaf)` on every masked leaf of `tree` (which has the params structure); other leaves,
    and leaves that are None in `tree` (frozen parts of a partitioned tree), are kept as they are."""
    return jax.tree.map(lambda m, x: x if m is None or x is None else fn(m, x), masks, tree,
                        is_leaf=_is_none)


def apply_masks(params: Any, masks: Masks) -> Any:
    """`params` with every pruned entry set to zero."""
    return map_masked(lambda m, w: jnp.where(m, w, jnp.zeros_like(w)), masks, params)


def _targeted(params: Any, targets: Targets) -> Any:
    """A params-shaped tree: True at targeted leaves, False elsewhere. The targets see the real leaves, so a
    predicate may look at their shapes."""
    return jax.tree.map(lambda x: x is True, select(params, targets, lambda path, _: True))


def _keep_top(scores: jax.Array, sparsity: jax.Array) -> jax.Array:
    """Bool mask keeping the `round((1 - sparsity) * size)` largest scores (ties broken by position)."""
    flat = scores.ravel()
    n_prune = jnp.clip(jnp.round(sparsity * flat.size), 0, flat.size).astype(jnp.int32)
    # Rank by a stable sort, so exactly n_prune entries go even when many scores tie (e.g. zeros).
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(flat.size, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks >= n_prune).reshape(scores.shape)


def magnitude(targets: Targets, scope: str = "layer") -> MaskFn:
    """Mask function for magnitude pruning of the leaves `targets` selects (see `leanjax.transforms.
    select`): `scope="layer"` prunes the same fraction of every leaf, `"global"` ranks all targeted
    weights together (layers with many small weights lose more)."""
    if scope not in ("layer", "global"):
        raise ValueError(f"scope={scope!r}: use 'layer' or 'global'")

    def mask_fn(params: Any, sparsity: jax.Array) -> Masks:
        chosen = _targeted(params, targets)
        if scope == "layer":
            return jax.tree.map(lambda c, w: _keep_top(jnp.abs(w), sparsity) if c else None, chosen, params,
                                is_leaf=_is_none)
        picked = [w for c, w in zip(jax.tree.leaves(chosen), jax.tree.leaves(params)) if c]
        keep = _keep_top(jnp.concatenate([jnp.abs(w).ravel() for w in picked]), sparsity)
        pieces = iter(jnp.split(keep, list(_cumsum([w.size for w in picked[:-1]]))))
        return jax.tree.map(lambda c, w: next(pieces).reshape(w.shape) if c else None, chosen, params,
                            is_leaf=_is_none)

    return mask_fn


def _cumsum(sizes):
    total = 0
    for s in sizes:
        total += s
        yield total


def nm_mask(w: jax.Array, n: int = 2, m: int = 4, axis: int = -2) -> jax.Array:
    """Keep the `n` largest-|w| entries of every `m` consecutive ones along `axis` (the contraction axis
    of an `[in, out]` kernel by default: the layout sparse tensor cores and `Packed24` use)."""
    axis %= w.ndim
    if w.shape[axis] % m:
        raise ValueError(f"N:M sparsity needs axis {axis} of shape {w.shape} divisible by m={m}")
    moved = jnp.moveaxis(jnp.abs(w), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, m)
    # The n largest of each group: rank within the group by a stable descending sort.
    order = jnp.argsort(-groups, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1)
    keep = (ranks < n).reshape(moved.shape)
    return jnp.moveaxis(keep, -1, axis)


def nm_masks(params: Any, targets: Targets, n: int = 2, m: int = 4, axis: int = -2) -> Masks:
    """N:M masks for the targeted leaves (None elsewhere)."""
    chosen = _targeted(params, targets)
    return jax.tree.map(lambda c, w: nm_mask(w, n, m, axis) if c else None, chosen, params, is_leaf=_is_none)


def polynomial_schedule(final_sparsity: float, begin_step: int, end_step: int, *, initial_sparsity: float = 0.0,
                        power: float = 3.0) -> optax.Schedule:
    """Zhu & Gupta's gradual schedule: `initial_sparsity` until `begin_step`, `final_sparsity` from
    `end_step` on, a cubic (for `power=3`) ramp in between that prunes fast early and slowly late."""
    if not 0.0 <= initial_sparsity <= final_sparsity < 1.0:
        raise ValueError(f"need 0 <= initial_sparsity ({initial_sparsity}) <= final_sparsity "
                         f"({final_sparsity}) < 1")
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step})")

    def schedule(step):
        progress = jnp.clip((step - begin_step) / (end_step - begin_step), 0.0, 1.0)
        return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power

    return schedule


class PruneState(NamedTuple):
    inner: optax.OptState
    masks: Masks
    count: jax.Array  # updates applied so far: the step the schedule is evaluated at


def _mask_updates(masks: Masks, updates: Any, params: Any) -> Any:
    """Updates that leave `params + updates` zero wherever the mask prunes."""
    return jax.tree.map(lambda m, u, p: u if m is None or u is None else jnp.where(m, u, -p),
                        masks, updates, params, is_leaf=_is_none)


def prune_by_schedule(inner: optax.GradientTransformation, schedule: optax.Schedule, mask_fn: MaskFn, *,
                      update_every: int = 1, end_step: int | None = None) -> optax.GradientTransformation:
    """`inner` with gradual pruning: the masks live in this transformation's state.

    At update `t` (counting from 0), when `t % update_every == 0` and `t <= end_step` (or always if
    `end_step` is None), the masks are recomputed as `mask_fn(params + updates, schedule(t + 1))`, so
    after update `t` the params have the sparsity the schedule names for step `t + 1`. Gradients of pruned
    weights are zeroed before `inner` sees them (no optimizer momentum on dead weights), and every
    update is corrected so pruned params stay exactly zero. `params` must be passed to `update`.
    """
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")

    def init(params):
        masks = mask_fn(params, jnp.asarray(schedule(0), jnp.float32))
        return PruneState(inner.init(params), masks, jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("prune_by_schedule needs params: call tx.update(grads, state, params)")
        grads = apply_masks(grads, state.masks)
        updates, inner_state = inner.update(grads, state.inner, params)
        t = state.count
        due = t % update_every == 0
        if end_step is not None:
            due &= t <= end_step
        new = optax.apply_updates(params, updates)
        masks = jax.lax.cond(due, lambda: mask_fn(new, jnp.asarray(schedule(t + 1), jnp.float32)),
                             lambda: state.masks)
        return _mask_updates(masks, updates, params), PruneState(inner_state, masks, t + 1)

    return optax.GradientTransformation(init, update)


def keep_masks(inner: optax.GradientTransformation, masks: Masks) -> optax.GradientTransformation:
    """`inner` with fixed masks (held in its state, so they checkpoint): pruned weights stay zero."""

    def init(params):
        # A copy: a train step that donates its state must not delete the caller's masks.
        return PruneState(inner.init(params), jax.tree.map(jnp.copy, masks), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("keep_masks needs params: call tx.update(grads, state, params)")
        updates, inner_state = inner.update(apply_masks(grads, state.masks), state.inner, params)
        return _mask_updates(state.masks, updates, params), PruneState(inner_state, state.masks, state.count + 1)

    return optax.GradientTransformation(init, update)


def gradual_pruning(make_inner: Callable[[], optax.GradientTransformation], mask_fn: MaskFn, ramp_steps: int, *,
                    update_every: int = 1) -> optax.GradientTransformation:
    """Zhu & Gupta's gradual pruning over the first `ramp_steps` updates, its final sparsity injected.

    Args:
      make_inner: builds the optimizer to wrap (called inside `optax.inject_hyperparams`).
      mask_fn: `(params, sparsity) -> masks`, e.g. `magnitude(targets)`.
      ramp_steps: updates over which the sparsity ramps (cubically) from 0 to its final value.
      update_every: recompute the masks every this many updates during the ramp.

    Returns:
      An `optax.GradientTransformation` whose state holds the masks and `hyperparams["sparsity"]` (0 until
      set, e.g. with `leanjax.optim.set_hyperparams(state, sparsity=0.75)`): runs at different final
      sparsities share one compiled train step.
    """
    # The cubic ramp from 0 is linear in its final value: the schedule for `sparsity` is sparsity * unit / 0.5.
    unit = polynomial_schedule(0.5, 0, ramp_steps)

    def make(sparsity):
        return prune_by_schedule(make_inner(), lambda step: sparsity * unit(step) / 0.5, mask_fn,
                                 update_every=update_every, end_step=ramp_steps)

    return optax.inject_hyperparams(make)(sparsity=0.0)


def complete_masks(masks: Masks, other: Masks) -> Masks:
    """Gives `masks` a mask at every leaf `other` prunes.

    Args:
      masks: a mask tree.
      other: a mask tree of the same params.

    Returns:
      `masks` with an all-True (keep everything) mask wherever only `other` has one, so two fine-tunes with
      `keep_masks` over `complete_masks(a, b)` and `complete_masks(b, a)` have states of one structure and
      share one compiled train step.
    """
    return jax.tree.map(lambda a, b: jnp.ones_like(b) if a is None and b is not None else a, masks, other,
                        is_leaf=_is_none)


def masks_of(opt_state: Any) -> Masks:
    """The masks held by the first `PruneState` in an optimizer state (e.g. a `TrainState.opt_state`)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState))
             if isinstance(s, PruneState)]
    if not found:
        raise ValueError("no PruneState in this optimizer state: was it built with prune_by_schedule/keep_masks?")
    return found[0].masks


def report(params: Any, masks: Masks | None = None) -> dict[str, float]:
    """Fraction of zeros per leaf that is pruned (per `masks`, or every leaf with >= 2 dims when None),
    from the stored values, plus `"overall"` over those leaves together."""
    if masks is None:
        chosen = [(p, w) for p, w in leaves_with_paths(params) if getattr(w, "ndim", 0) >= 2]
    else:
        flags = dict(leaves_with_paths(jax.tree.map(lambda m: m is not None, masks, is_leaf=_is_none)))
        chosen = [(p, w) for p, w in leaves_with_paths(params) if flags.get(p) is True]
    out = {p: float(jnp.mean(w == 0)) for p, w in chosen}
    total = sum(w.size for _, w in chosen)
    out["overall"] = sum(out[p] * w.size for p, w in chosen) / max(total, 1)
    return out

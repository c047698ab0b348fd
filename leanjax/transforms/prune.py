"""Pruning masks: magnitude (per layer or global), N:M, structured units, and an optax wrapper that keeps
them, so any optimizer prunes and the masks checkpoint and resume with the optimizer state.

A *mask tree* has the structure of the params with a bool array (True = keep) at each pruned leaf and
`None` elsewhere. The pruned params themselves stay plain arrays holding zeros, so every model runs on
them unchanged; real savings come from `leanjax.transforms.compact` (structured units physically
removed) and `leanjax.transforms.sparse24` (2:4 weights stored as half the values plus 2-bit indices).

- `magnitude(targets, scope="layer"|"global")`: a *mask function* `(params, sparsity) -> masks` that
  drops the smallest-|w| fraction of each targeted leaf, or of all of them pooled (global).
- `top_scores(targets, scope)`: the same on signed values (keep the largest), for scores that are not
  magnitudes: movement pruning's (Sanh et al. 2020, "Movement Pruning", arXiv:2005.07683), whose score
  `S = -sum_t w_t * dL/dw_t` the pruning wrappers accumulate in their state with `movement=True` (weights
  moving away from zero score high, weights shrinking toward it score low, whatever their size).
- `nm_masks(params, targets, n=2, m=4)`: keep the `n` largest of every `m` consecutive weights along the
  contraction axis (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378).
- `polynomial_schedule(...)`: the gradual schedule of Zhu & Gupta 2017, "To prune, or not to prune",
  arXiv:1710.01878: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3.
- `prune_by_schedule(inner, schedule, mask_fn, update_every)`: an `optax.GradientTransformation` whose
  state holds the masks; every `update_every` steps in the schedule's window it recomputes them from the
  updated params, and after every step it re-applies them (masked gradients, pruned params held at 0).
  With `movement=True` the masks are ranked on the accumulated movement scores instead of the params.
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
    """`params` with every pruned entry set to zero.

    Args:
      params: a params tree.
      masks: a mask tree (bool arrays, True = keep, at pruned leaves; None elsewhere).

    Returns:
      The masked params (plain arrays holding zeros).
    """
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


def _top_fraction(targets: Targets, scope: str, score: Callable[[jax.Array], jax.Array]) -> MaskFn:
    """Mask function keeping the largest `score(leaf)` entries of each targeted leaf, or of all pooled."""
    if scope not in ("layer", "global"):
        raise ValueError(f"scope={scope!r}: use 'layer' or 'global'")

    def mask_fn(params: Any, sparsity: jax.Array) -> Masks:
        chosen = _targeted(params, targets)
        if scope == "layer":
            return jax.tree.map(lambda c, w: _keep_top(score(w), sparsity) if c else None, chosen, params,
                                is_leaf=_is_none)
        picked = [w for c, w in zip(jax.tree.leaves(chosen), jax.tree.leaves(params)) if c]
        keep = _keep_top(jnp.concatenate([score(w).ravel() for w in picked]), sparsity)
        pieces = iter(jnp.split(keep, list(_cumsum([w.size for w in picked[:-1]]))))
        return jax.tree.map(lambda c, w: next(pieces).reshape(w.shape) if c else None, chosen, params,
                            is_leaf=_is_none)

    return mask_fn


def magnitude(targets: Targets, scope: str = "layer") -> MaskFn:
    """Mask function for magnitude pruning of the leaves `targets` selects.

    Args:
      targets: a regex on '/'-joined paths, or `fn(path, leaf) -> bool` (it sees the real leaves).
      scope: "layer" prunes the same fraction of every leaf; "global" ranks all targeted weights together
        (layers with many small weights lose more).

    Returns:
      `mask_fn(params, sparsity) -> masks`, for `prune_by_schedule` / `gradual_pruning` or called directly.
    """
    return _top_fraction(targets, scope, jnp.abs)


def top_scores(targets: Targets, scope: str = "layer") -> MaskFn:
    """Mask function keeping the largest (signed) values of the targeted leaves of a score tree.

    Args:
      targets: a regex on '/'-joined paths, or `fn(path, leaf) -> bool`.
      scope: "layer" prunes the same fraction of every leaf; "global" ranks all targeted scores together.

    Returns:
      `mask_fn(scores, sparsity) -> masks`: with `prune_by_schedule(..., movement=True)` /
      `gradual_pruning(..., movement=True)`, movement pruning (Sanh et al. 2020, arXiv:2005.07683).
    """
    return _top_fraction(targets, scope, lambda s: s)


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
    """N:M masks for the targeted leaves: the `n` largest |w| of every `m` consecutive entries along `axis`.

    Args:
      params: a params tree.
      targets: a regex on '/'-joined paths, or `fn(path, leaf) -> bool`.
      n: entries kept per group.
      m: group size.
      axis: the contraction axis (-2 for `[in, out]` kernels).

    Returns:
      A mask tree (None at untargeted leaves).
    """
    chosen = _targeted(params, targets)
    return jax.tree.map(lambda c, w: nm_mask(w, n, m, axis) if c else None, chosen, params, is_leaf=_is_none)


def polynomial_schedule(final_sparsity: float, begin_step: int, end_step: int, *, initial_sparsity: float = 0.0,
                        power: float = 3.0) -> optax.Schedule:
    """Zhu & Gupta's gradual schedule (arXiv:1710.01878): `initial_sparsity` until `begin_step`,
    `final_sparsity` from `end_step` on, a cubic (for `power=3`) ramp in between that prunes fast early
    and slowly late.

    Args:
      final_sparsity: in [initial_sparsity, 1).
      begin_step: where the ramp starts.
      end_step: where it ends (after `begin_step`).
      initial_sparsity: before the ramp.
      power: the ramp's exponent.

    Returns:
      `schedule(step) -> sparsity`.
    """
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
    scores: Any = None  # movement pruning: -sum_t w_t * g_t per targeted weight (mask-shaped); else None


def _movement(scores: Any, grads: Any, params: Any) -> Any:
    """`scores - grads * params` at every scored leaf (Sanh et al.'s S accumulated by one step; a pruned
    weight, held at zero, keeps its score)."""
    return jax.tree.map(lambda s, g, p: s if s is None or g is None else s - (g * p).astype(s.dtype),
                        scores, grads, params, is_leaf=_is_none)


def _mask_updates(masks: Masks, updates: Any, params: Any) -> Any:
    """Updates that leave `params + updates` zero wherever the mask prunes."""
    return jax.tree.map(lambda m, u, p: u if m is None or u is None else jnp.where(m, u, -p),
                        masks, updates, params, is_leaf=_is_none)


def prune_by_schedule(inner: optax.GradientTransformation, schedule: optax.Schedule, mask_fn: MaskFn, *,
                      update_every: int = 1, end_step: int | None = None,
                      movement: bool = False) -> optax.GradientTransformation:
    """`inner` with gradual pruning: the masks live in this transformation's state.

    At update `t` (counting from 0), when `t % update_every == 0` and `t <= end_step` (or always if
    `end_step` is None), the masks are recomputed as `mask_fn(params + updates, schedule(t + 1))`, so after
    update `t` the params have the sparsity the schedule names for step `t + 1`. Gradients of pruned weights
    are zeroed before `inner` sees them (no optimizer momentum on dead weights), and every update is
    corrected so pruned params stay exactly zero. `params` must be passed to `update`.

    With `movement=True` (Sanh et al. 2020, arXiv:2005.07683) the state also holds, for every leaf `mask_fn`
    prunes, the movement score `S = -sum_t w_t * g_t` over the updates so far (the gradient before masking,
    the params before the update; a pruned weight is zero, so its score stays where it was and it can come
    back only if others' scores fall below it), and the masks are `mask_fn(S, sparsity)`: give it
    `top_scores(targets)`. The scores start at zero, so a schedule that starts above 0 prunes its first
    masks by position.

    Args:
      inner: the optimizer to wrap.
      schedule: `schedule(step) -> sparsity`, e.g. `polynomial_schedule(...)`.
      mask_fn: `(params, sparsity) -> masks`, e.g. `magnitude(targets)`.
      update_every: recompute the masks every this many updates.
      end_step: no recomputation after this update (None: never stop).
      movement: rank on the accumulated movement scores (`PruneState.scores`) instead of the params.

    Returns:
      An `optax.GradientTransformation` (its state a `PruneState`; `masks_of` reads the masks).
    """
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")

    def init(params):
        if not movement:
            masks = mask_fn(params, jnp.asarray(schedule(0), jnp.float32))
            return PruneState(inner.init(params), masks, jnp.zeros((), jnp.int32))
        pruned = mask_fn(params, jnp.zeros((), jnp.float32))  # which leaves get a score
        scores = jax.tree.map(lambda m, w: None if m is None else jnp.zeros(w.shape, jnp.float32), pruned, params,
                              is_leaf=_is_none)
        masks = mask_fn(scores, jnp.asarray(schedule(0), jnp.float32))
        return PruneState(inner.init(params), masks, jnp.zeros((), jnp.int32), scores)

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("prune_by_schedule needs params: call tx.update(grads, state, params)")
        scores = _movement(state.scores, grads, params) if movement else None
        grads = apply_masks(grads, state.masks)
        updates, inner_state = inner.update(grads, state.inner, params)
        t = state.count
        due = t % update_every == 0
        if end_step is not None:
            due &= t <= end_step
        ranked = scores if movement else optax.apply_updates(params, updates)
        masks = jax.lax.cond(due, lambda: mask_fn(ranked, jnp.asarray(schedule(t + 1), jnp.float32)),
                             lambda: state.masks)
        return _mask_updates(masks, updates, params), PruneState(inner_state, masks, t + 1, scores)

    return optax.GradientTransformation(init, update)


def keep_masks(inner: optax.GradientTransformation, masks: Masks) -> optax.GradientTransformation:
    """`inner` with fixed masks (held in its state, so they checkpoint): pruned weights stay zero.

    Args:
      inner: the optimizer to wrap.
      masks: the mask tree to keep (copied into the state).

    Returns:
      An `optax.GradientTransformation` masking gradients and updates.
    """

    def init(params):
        # A copy: a train step that donates its state must not delete the caller's masks.
        return PruneState(inner.init(params), jax.tree.map(jnp.copy, masks), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("keep_masks needs params: call tx.update(grads, state, params)")
        updates, inner_state = inner.update(apply_masks(grads, state.masks), state.inner, params)
        return _mask_updates(state.masks, updates, params), PruneState(inner_state, state.masks, state.count + 1,
                                                                       state.scores)

    return optax.GradientTransformation(init, update)


def gradual_pruning(make_inner: Callable[[], optax.GradientTransformation], mask_fn: MaskFn, ramp_steps: int, *,
                    update_every: int = 1, movement: bool = False) -> optax.GradientTransformation:
    """Zhu & Gupta's gradual pruning over the first `ramp_steps` updates, its final sparsity injected.

    Args:
      make_inner: builds the optimizer to wrap (called inside `optax.inject_hyperparams`).
      mask_fn: `(params, sparsity) -> masks`, e.g. `magnitude(targets)`.
      ramp_steps: updates over which the sparsity ramps (cubically) from 0 to its final value.
      update_every: recompute the masks every this many updates during the ramp.
      movement: movement pruning (`mask_fn` then ranks the accumulated scores: `top_scores(targets)`; see
        `prune_by_schedule`).

    Returns:
      An `optax.GradientTransformation` whose state holds the masks and `hyperparams["sparsity"]` (0 until
      set, e.g. with `leanjax.optim.set_hyperparams(state, sparsity=0.75)`): runs at different final
      sparsities share one compiled train step.
    """
    # The cubic ramp from 0 is linear in its final value: the schedule for `sparsity` is sparsity * unit / 0.5.
    unit = polynomial_schedule(0.5, 0, ramp_steps)

    def make(sparsity):
        return prune_by_schedule(make_inner(), lambda step: sparsity * unit(step) / 0.5, mask_fn,
                                 update_every=update_every, end_step=ramp_steps, movement=movement)

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
    """The masks held by the first `PruneState` in an optimizer state.

    Args:
      opt_state: e.g. a `TrainState.opt_state` built with `prune_by_schedule`, `gradual_pruning` or
        `keep_masks`.

    Returns:
      The mask tree.
    """
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

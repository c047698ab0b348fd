"""Pure, jit-compiled train and eval steps.

`make_train_step` turns a loss `loss_fn(params, batch, rng) -> (loss, metrics)` into
`step(state, batch) -> (state, metrics)`: one XLA program with the old state donated, gradients taken
only with respect to the trainable leaves, optional gradient accumulation over micro-batches (a
`lax.scan`, so the program does not grow with the number of micro-batches).

`make_eval_step` turns per-example metrics into a `clu.metrics` collection of masked averages, so padded
final batches and multi-batch evaluation combine exactly.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from leanjax.state import TrainState
from leanjax.trees import combine, partition

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


def _split_microbatches(batch: Any, n: int) -> Any:
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch dimension {x.shape[0]} is not divisible by grad_accum_steps={n}")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, trainable: Any | None = None,
                    grad_accum_steps: int = 1, donate: bool = True, jit: bool = True,
                    in_shardings: Any = None, out_shardings: Any = None) -> Callable:
    """Build the train step. `trainable` is a bool mask over the params leaves (None: all trainable)."""
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")

    def step(state: TrainState, batch: Any):
        rng, step_rng = jax.random.split(state.rng)
        train_params, frozen_params = partition(state.params, trainable)

        def loss_of(tp, mb, r):
            return loss_fn(combine(tp, frozen_params), mb, r)

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        if grad_accum_steps == 1:
            (loss, metrics), grads = grad_fn(train_params, batch, step_rng)
        else:
            micro = _split_microbatches(batch, grad_accum_steps)
            rngs = jax.random.split(step_rng, grad_accum_steps)
            zeros = jax.tree.map(jnp.zeros_like, train_params)

            def accumulate(grads_sum, xs):
                mb, r = xs
                (micro_loss, m), g = grad_fn(train_params, mb, r)
                return jax.tree.map(jnp.add, grads_sum, g), (micro_loss, m)

            grads, (losses, metrics) = jax.lax.scan(accumulate, zeros, (micro, rngs))
            grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
            loss, metrics = losses.mean(), jax.tree.map(jnp.mean, metrics)

        updates, opt_state = tx.update(grads, state.opt_state, train_params)
        new_params = combine(optax.apply_updates(train_params, updates), frozen_params)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state, rng=rng)
        return new_state, metrics

    if not jit:
        return step
    kwargs = {}
    if in_shardings is not None:
        kwargs["in_shardings"] = in_shardings
    if out_shardings is not None:
        kwargs["out_shardings"] = out_shardings
    return jax.jit(step, donate_argnums=(0,) if donate else (), **kwargs)


def metrics_collection(names: tuple[str, ...]) -> type[clu_metrics.Collection]:
    """A clu Collection of masked averages, one per metric name."""
    return clu_metrics.Collection.create(**{n: clu_metrics.Average.from_output(n) for n in names})


def make_eval_step(metrics_fn: Callable[[Any, Any], Mapping[str, jax.Array]],
                   names: tuple[str, ...] = ("loss", "accuracy"), jit: bool = True) -> Callable:
    """`eval_step(params, batch) -> clu Collection`; `batch['mask']` (if present) drops padded rows."""
    collection = metrics_collection(names)

    def eval_step(params: Any, batch: Any):
        per_example = metrics_fn(params, batch)
        missing = [n for n in names if n not in per_example]
        if missing:
            raise KeyError(f"metrics_fn returned {sorted(per_example)}; missing {missing}")
        mask = batch.get("mask") if isinstance(batch, Mapping) else None
        return collection.single_from_model_output(**{n: per_example[n] for n in names}, mask=mask)

    return jax.jit(eval_step) if jit else eval_step


def evaluate(eval_step: Callable, params: Any, batches: Any) -> dict[str, float]:
    """Run `eval_step` over an iterable of batches and return the merged averages as floats."""
    total = None
    for batch in batches:
        result = eval_step(params, batch)
        total = result if total is None else total.merge(result)
    if total is None:
        raise ValueError("evaluate() got no batches")
    return {k: float(v) for k, v in total.compute().items()}

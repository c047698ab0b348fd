"""Optimizers: AdamW/Adafactor/SGD with warmup + cosine/constant schedules, clipping, and injectable
hyperparameters.

Adafactor (Shazeer & Stern 2018, https://arxiv.org/abs/1804.04235) is the memory-lean choice: no first
moment, and the second moment of an `[m, n]` matrix factored into `m + n` numbers, so its state is a few
percent of Adam's `2mn`. Here its rate is absolute (no scaling by each parameter's RMS), so a rate tuned
for Adam is a sensible start.

Hyperparameters are wrapped in `optax.inject_hyperparams`, so the learning rate and weight decay live in
the optimizer state: a tuner can vmap a population of them through one XLA program, and a schedule
change never needs a recompile.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                           schedule: str = "cosine", end_fraction: float = 0.0) -> optax.Schedule:
    if schedule == "constant":
        decay = optax.constant_schedule(learning_rate)
    elif schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1),
                                            alpha=end_fraction)
    elif schedule == "linear":
        decay = optax.linear_schedule(learning_rate, learning_rate * end_fraction,
                                      max(total_steps - warmup_steps, 1))
    else:
        raise ValueError(f"unknown schedule {schedule!r}: use 'cosine', 'linear' or 'constant'")
    if warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(name: str = "adamw", *, learning_rate: float = 1e-3, total_steps: int = 1000,
                   warmup_steps: int = 0, schedule: str = "cosine", weight_decay: float = 0.0,
                   clip_norm: float | None = 1.0, b1: float = 0.9, b2: float = 0.999,
                   momentum: float = 0.9, inject_learning_rate: bool = False) -> optax.GradientTransformation:
    """An optimizer whose rate scale and weight decay live in its state (`optax.inject_hyperparams`).

    Args:
      name: 'adamw', 'adam', 'adafactor' or 'sgd'.
      learning_rate: the peak rate of the schedule.
      total_steps: the schedule's length (warmup included).
      warmup_steps: linear warmup from 0.
      schedule: 'cosine', 'linear' (both to 0) or 'constant' after the warmup.
      weight_decay: decoupled weight decay (injected: `opt_state.hyperparams["weight_decay"]`).
      clip_norm: global-norm gradient clipping; None: none.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      momentum: SGD's momentum.
      inject_learning_rate: the schedule gets a unit peak and `learning_rate` is the injected
        `learning_rate_scale` instead, so optimizers differing only in their rate share one compiled step
        (set it per run with `set_hyperparams`). Without it the scale is 1.

    Returns:
      An `optax.GradientTransformation` (its state holds `hyperparams`).
    """
    scale = learning_rate if inject_learning_rate else 1.0
    lr_fn = learning_rate_schedule(1.0 if inject_learning_rate else learning_rate, total_steps, warmup_steps,
                                   schedule)

    def build(learning_rate_scale, weight_decay):
        lr = lambda count: lr_fn(count) * learning_rate_scale  # noqa: E731
        if name == "adamw":
            core = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
        elif name == "adam":
            core = optax.adam(lr, b1=b1, b2=b2)
        elif name == "adafactor":
            core = optax.adafactor(lr, multiply_by_parameter_scale=False, weight_decay_rate=weight_decay)
        elif name == "sgd":
            core = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))
        else:
            raise ValueError(f"unknown optimizer {name!r}: use 'adamw', 'adam', 'adafactor' or 'sgd'")
        return optax.chain(optax.clip_by_global_norm(clip_norm), core) if clip_norm else core

    return optax.inject_hyperparams(build)(learning_rate_scale=scale, weight_decay=weight_decay)


def set_hyperparams(state: Any, **values: float) -> Any:
    """Sets injected optimizer hyperparameters in a train state: the values live in the optimizer state, so
    runs differing only in them share one compiled step.

    Args:
      state: a `TrainState` (anything with `opt_state` and `replace`) whose optimizer was built with
        `optax.inject_hyperparams` (`make_optimizer` does).
      **values: name -> value, e.g. `learning_rate_scale=3e-4, weight_decay=0.01`.

    Returns:
      `state` with `opt_state.hyperparams[name] = value` (in the hyperparameter's dtype) for each one given
      (`state` itself when none is).
    """
    if not values:
        return state
    hyper = getattr(state.opt_state, "hyperparams", None)
    if hyper is None:
        raise ValueError("the optimizer state has no injected hyperparameters: build the optimizer with "
                         "optax.inject_hyperparams (leanjax.optim.make_optimizer does)")
    unknown = sorted(set(values) - set(hyper))
    if unknown:
        raise KeyError(f"no injected hyperparameter {unknown}; the optimizer injects {sorted(hyper)}")
    new = {**hyper, **{k: jnp.asarray(v, dtype=jnp.asarray(hyper[k]).dtype) for k, v in values.items()}}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=new))

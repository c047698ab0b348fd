"""Short training loops for experiments that compare arms: one jitted step per arm, its compilations
counted, and an evaluation curve.

Curriculum and sampling arms need per-step batch shapes and samplers that `fit` does not take; these two
pieces let such an experiment write its loop in a few lines while counting what each arm costs the
compiler (a new batch shape is a new trace, hence a new compilation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from leanjax.state import TrainState
from leanjax.step import make_train_step


class StepsPerArm:
    """One jitted train step per arm, shared by the arm's seeds, counting its compilations.

    `steps(arm)` returns the arm's `step(state, batch) -> (state, metrics)`; `steps.compiles[arm]` is how
    many times it was traced (the Python body runs once per trace, i.e. once per new batch shape).
    """

    def __init__(self, loss_fn: Callable[..., Any], tx: optax.GradientTransformation):
        self.loss_fn, self.tx = loss_fn, tx
        self.steps: dict[str, Callable[..., Any]] = {}
        self.compiles: dict[str, int] = {}

    def __call__(self, arm: str) -> Callable[..., Any]:
        if arm not in self.steps:
            inner = make_train_step(self.loss_fn, self.tx, jit=False)
            self.compiles[arm] = 0

            def step(state, batch):
                self.compiles[arm] += 1
                return inner(state, batch)

            self.steps[arm] = jax.jit(step, donate_argnums=0)
        return self.steps[arm]


def train_with_curve(step_fn: Callable[..., Any], params: Any, tx: optax.GradientTransformation, seed: int,
                     next_batch: Callable[[int], Any], num_steps: int, eval_fn: Callable[[Any], float],
                     eval_every: int) -> tuple[TrainState, list[tuple[int, float]], float]:
    """Train a copy of `params` for `num_steps`, evaluating every `eval_every` steps and at the end.

    Args:
      step_fn: `step(state, batch) -> (state, metrics)`, e.g. from `StepsPerArm` (it may donate the state).
      params: the initial params (copied: the caller's stay valid).
      tx: the optimizer the state is created with.
      seed: the state's random key.
      next_batch: `next_batch(step_index) -> batch`.
      num_steps: steps to run.
      eval_fn: `eval_fn(params) -> metric`.
      eval_every: evaluation period in steps.

    Returns:
      `(final_state, [(step, metric), ...], wall_seconds)`; the wall time includes compilation.
    """
    state = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(seed))
    curve, t0 = [], time.perf_counter()
    for s in range(num_steps):
        state, _ = step_fn(state, next_batch(s))
        if (s + 1) % eval_every == 0 or s + 1 == num_steps:
            curve.append((s + 1, eval_fn(state.params)))
    return state, curve, time.perf_counter() - t0

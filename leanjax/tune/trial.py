"""One trial: a short training run that reports its evaluation at rungs and stops when told to.

This is deliberately not `leanjax.train.fit`: a trial needs no checkpoints, logs or progress bar (a
crashed trial is failed and replaced, not resumed), and a pruned trial must stop consuming steps at once.
The loop is the same pieces as `fit`: a jitted `train_step(state, batch)`, an `eval_fn(params)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrialResult:
    state: Any
    steps: int                      # training steps actually taken (the compute the trial cost)
    metrics: Mapping[str, float]    # the last evaluation
    stopped: bool                   # True when `report` stopped it before `num_steps` (pruned)
    diverged: bool = False          # True when the training loss went non-finite (it stops there too)


def train_trial(state: Any, train_step: Callable, batches: Iterator, *, num_steps: int,
                eval_fn: Callable[[Any], Mapping[str, float]], eval_every: int,
                report: Callable[[int, Mapping[str, float]], bool] | None = None) -> TrialResult:
    """Train for `num_steps`, evaluating every `eval_every` steps and at the end.

    `report(step, metrics) -> stop` sees each evaluation (an Optuna pruner decides there); the trial
    stops as soon as it returns True. A non-finite training loss ends the trial at that evaluation
    (further steps would be wasted), unreported: it is a bad configuration, not a pruned one.
    """
    if num_steps < 1 or eval_every < 1:
        raise ValueError(f"num_steps and eval_every must be >= 1, got {num_steps} and {eval_every}")
    metrics: Mapping[str, float] = {}
    for step in range(1, num_steps + 1):
        state, train_metrics = train_step(state, next(batches))
        if step % eval_every and step != num_steps:
            continue
        metrics = eval_fn(state.params)
        if not math.isfinite(float(train_metrics["loss"])):
            return TrialResult(state, step, metrics, stopped=False, diverged=True)
        if report is not None and report(step, metrics) and step != num_steps:
            return TrialResult(state, step, metrics, stopped=True)
    return TrialResult(state, num_steps, metrics, stopped=False)

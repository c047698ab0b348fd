"""Populations: N trials with different continuous hyperparameters trained in one XLA program.

`leanjax.optim.make_optimizer` wraps its optimizer in `optax.inject_hyperparams`, so the learning rate
scale and the weight decay are arrays inside `opt_state.hyperparams`, not constants baked into the
program. Stacking N `TrainState`s (each with its own init seed, RNG and hyperparameters) along a new
leading axis and `jax.vmap`-ing the unchanged train step over it trains all N on the same batches in one
compiled step: one dispatch, one data pipeline, and wider matmuls, instead of N of each. That pays when
one trial under-fills the device (small models, small batches); a trial that already saturates it gains
nothing but a larger memory footprint.

Members the pruner stops are dropped at rungs (the population shrinks, so they stop costing; each
distinct population size compiles once). `optimize_population` reports each member as its own Optuna
trial, so samplers and pruners see them exactly like sequential trials. Searching over shapes (widths,
depths) cannot vmap: those stay sequential trials.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optuna

from leanjax.step import evaluate
from leanjax.tune.space import distributions
from leanjax.tune.storage import heartbeat
from leanjax.tune.study import STEPS_ATTR, ask
from leanjax.tune.trial import train_trial


def stack(states: Sequence[Any]) -> Any:
    """Stack same-structure pytrees along a new leading (member) axis."""
    if not states:
        raise ValueError("a population needs at least one member")
    shapes = [jax.tree.map(jnp.shape, s) for s in states]
    for i, s in enumerate(shapes[1:], 1):
        if s != shapes[0]:
            raise ValueError(f"member {i} differs in structure or shapes from member 0: a population may vary "
                             "values (seeds, injected hyperparameters), not shapes")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def take(stacked: Any, members: Sequence[int]) -> Any:
    """The sub-population `members` (indices along the member axis)."""
    index = np.asarray(members, dtype=np.int32)
    return jax.tree.map(lambda x: x[index], stacked)


def unstack(stacked: Any) -> list[Any]:
    n = jax.tree.leaves(stacked)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)]


def make_population_step(train_step: Callable) -> Callable:
    """`pop_step(stacked_state, batch)`: an *unjitted* `train_step` (make_train_step(..., jit=False))
    vmapped over the members, all seeing the same batch, jitted with the population donated."""
    return jax.jit(jax.vmap(train_step, in_axes=(0, None)), donate_argnums=(0,))


def make_population_eval(eval_step: Callable) -> Callable:
    """`pop_eval(stacked_params, batches) -> [metrics of member i]` from an unjitted
    `make_eval_step(..., jit=False)`: the clu averages are vmapped, so they merge per member exactly."""
    step = jax.jit(jax.vmap(eval_step, in_axes=(0, None)))

    def pop_eval(params: Any, batches: Any) -> list[dict[str, float]]:
        total = None
        for batch in batches:
            result = step(params, batch)
            total = result if total is None else total.merge(result)
        if total is None:
            raise ValueError("population evaluation got no batches")
        values = jax.device_get(jax.vmap(lambda c: c.compute())(total))  # clu computes unbatched only
        n = len(next(iter(values.values())))
        return [{k: float(v[i]) for k, v in values.items()} for i in range(n)]

    return pop_eval


@dataclass(frozen=True)
class PopulationResult:
    states: list[Any]                   # each member's final (or stopping) state
    steps: list[int]                    # training steps each member took
    metrics: list[Mapping[str, float]]  # each member's last evaluation
    stopped: list[bool]                 # True where `report` stopped the member early


def train_population(stacked: Any, pop_step: Callable, batches: Iterator, *, num_steps: int,
                     eval_fn: Callable[[Any], list[Mapping[str, float]]], eval_every: int,
                     report: Callable[[int, int, Mapping[str, float]], bool] | None = None) -> PopulationResult:
    """`train_trial` for a stacked population: every `eval_every` steps, `report(member, step, metrics)`
    decides for each live member whether it stops; stopped members leave the program."""
    if num_steps < 1 or eval_every < 1:
        raise ValueError(f"num_steps and eval_every must be >= 1, got {num_steps} and {eval_every}")
    n = jax.tree.leaves(stacked)[0].shape[0]
    alive = list(range(n))
    states, steps, metrics, stopped = [None] * n, [num_steps] * n, [{}] * n, [False] * n
    for step in range(1, num_steps + 1):
        stacked, _ = pop_step(stacked, next(batches))
        if step % eval_every and step != num_steps:
            continue
        keep = []
        for pos, (member, m) in enumerate(zip(alive, eval_fn(stacked.params))):
            metrics[member] = m
            if report is not None and report(member, step, m) and step != num_steps:
                stopped[member], steps[member] = True, step
                states[member] = jax.tree.map(lambda x, p=pos: x[p], stacked)
            else:
                keep.append(pos)
        if not keep:
            break
        if len(keep) < len(alive):
            stacked, alive = take(stacked, keep), [alive[p] for p in keep]
    for member, state in zip(alive, unstack(stacked)):
        if states[member] is None:
            states[member] = state
    return PopulationResult(states, steps, metrics, stopped)


def optimize_population(study: optuna.Study, *, space: Mapping, n: int,
                        init_state: Callable[[Mapping[str, Any], int], Any], pop_step: Callable,
                        batches: Iterator, num_steps: int, eval_fn: Callable, eval_every: int, key: str,
                        heartbeat_interval: float = 5.0) -> PopulationResult:
    """Ask `n` trials, train them as one population, tell each its own result.

    `init_state(params, member) -> TrainState` builds member `member`'s state from its sampled `params`
    (typically `leanjax.optim.set_hyperparams(TrainState.create(...), ...)` with a per-member seed). Each
    trial reports `metrics[key]` at every evaluation and is pruned when its pruner says so.
    """
    dists = distributions(space)
    trials = [ask(study, dists) for _ in range(n)]
    stacked = stack([init_state(t.params, i) for i, t in enumerate(trials)])

    def report(member: int, step: int, metrics: Mapping[str, float]) -> bool:
        trials[member].report(float(metrics[key]), step)
        return trials[member].should_prune()

    with contextlib.ExitStack() as beats:
        for t in trials:
            beats.enter_context(heartbeat(study, t, heartbeat_interval))
        result = train_population(stacked, pop_step, batches, num_steps=num_steps, eval_fn=eval_fn,
                                  eval_every=eval_every, report=report)
    for t, steps, m, pruned in zip(trials, result.steps, result.metrics, result.stopped):
        t.set_user_attr(STEPS_ATTR, steps)
        study.tell(t, None if pruned else float(m[key]),
                   state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE)
    return result


def compare_population(study: optuna.Study, *, space: Mapping, n: int,
                       init_state: Callable[[Mapping[str, Any], int], Any], step_fn: Callable, eval_step_fn: Callable,
                       batches: Callable[[], Iterator], val: Sequence, num_steps: int, eval_every: int, key: str,
                       heartbeat_interval: float = 5.0) -> dict[str, float]:
    """The same `n` trials trained as one vmapped population and one after another, both timed.

    Both programs (and the evaluation steps) are compiled before the clocks start. The population is
    `optimize_population` on `study` (so its members are Optuna trials); the sequential runs replay those
    trials' sampled params with `train_trial`.

    Args:
      study: where the population's trials are asked and told.
      space: the search space (`leanjax.tune.space`).
      n: the population size.
      init_state: `(params, member) -> TrainState`, member `member`'s state from its sampled params.
      step_fn: the unjitted train step (`make_train_step(..., jit=False)`).
      eval_step_fn: the unjitted eval step (`make_eval_step(..., jit=False)`).
      batches: `() -> iterator`, a fresh training iterator (the same order for every trial).
      val: the validation batches.
      num_steps: each trial's training steps.
      eval_every: each trial's evaluation interval.
      key: the metric reported (and compared).
      heartbeat_interval: seconds between the population trials' heartbeats.

    Returns:
      `{"vmapped_s", "sequential_s", "speedup"` (sequential / vmapped), `"max_abs_metric_diff"`
      (the largest difference of a member's final `key` from its sequential twin's)`}`.
    """
    pop_step, pop_eval = make_population_step(step_fn), make_population_eval(eval_step_fn)
    train_step, eval_step = jax.jit(step_fn, donate_argnums=(0,)), jax.jit(eval_step_fn)
    before = len(study.trials)
    probe = {name: d.choices[0] if hasattr(d, "choices") else d.low for name, d in distributions(space).items()}
    batch, warm = next(batches()), init_state(probe, 0)
    evaluate(eval_step, warm.params, val)
    jax.block_until_ready(train_step(warm, batch))  # donates `warm`: evaluated first
    stacked, _ = pop_step(stack([init_state(probe, i) for i in range(n)]), batch)
    pop_eval(stacked.params, val)

    t0 = time.perf_counter()
    result = optimize_population(study, space=space, n=n, init_state=init_state, pop_step=pop_step,
                                 batches=batches(), num_steps=num_steps, eval_fn=lambda p: pop_eval(p, val),
                                 eval_every=eval_every, key=key, heartbeat_interval=heartbeat_interval)
    jax.block_until_ready(result.states)
    vmapped_s = time.perf_counter() - t0

    trials = sorted(study.trials, key=lambda t: t.number)[before:]  # the population's, in member order
    t0 = time.perf_counter()
    sequential = [train_trial(init_state(t.params, i), train_step, batches(), num_steps=num_steps,
                              eval_fn=lambda p: evaluate(eval_step, p, val), eval_every=eval_every)
                  for i, t in enumerate(trials)]
    jax.block_until_ready([r.state for r in sequential])
    sequential_s = time.perf_counter() - t0
    return dict(vmapped_s=vmapped_s, sequential_s=sequential_s, speedup=sequential_s / vmapped_s,
                max_abs_metric_diff=max(abs(r.metrics[key] - m[key]) for r, m in zip(sequential, result.metrics)))

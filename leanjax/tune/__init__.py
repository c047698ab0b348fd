"""Hyperparameter search on Optuna (ask/tell), and vmapped trial populations.

- `space`: search spaces as plain tuples a config can hold -> Optuna distributions.
- `storage`: SQLite / journal / RDB storages, heartbeats so a dead worker's trial fails.
- `study`: TPE / random / GP samplers, Hyperband / successive-halving pruners, the worker loop, compute
  accounting (training steps summed over trials).
- `trial`: one short training run that reports at rungs and stops when pruned.
- `population`: N trials in one XLA program by vmapping over `optax.inject_hyperparams` state.
"""

from leanjax.optim import set_hyperparams
from leanjax.tune.population import (
    PopulationResult,
    compare_population,
    make_population_eval,
    make_population_step,
    optimize_population,
    stack,
    take,
    train_population,
    unstack,
)
from leanjax.tune.space import distributions
from leanjax.tune.storage import fail_stale_trials, heartbeat, open_storage, storage_url
from leanjax.tune.study import (
    STEPS_ATTR,
    best_so_far,
    compare_methods,
    compute_to_target,
    finished,
    make_pruner,
    make_sampler,
    open_study,
    plot_history,
    pruning_reporter,
    run_worker,
)
from leanjax.tune.trial import TrialResult, train_trial

__all__ = [
    "PopulationResult", "STEPS_ATTR", "TrialResult", "best_so_far", "compare_methods", "compare_population",
    "compute_to_target", "distributions", "fail_stale_trials", "finished", "heartbeat", "make_population_eval",
    "make_population_step", "make_pruner", "make_sampler", "open_storage", "open_study", "optimize_population",
    "plot_history", "pruning_reporter", "run_worker", "set_hyperparams", "stack", "storage_url", "take",
    "train_population", "train_trial", "unstack",
]

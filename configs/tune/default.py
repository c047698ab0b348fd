"""Tune: random search vs TPE vs TPE+Hyperband on the MNIST-5k CNN, and vmapped trial populations.

    python -m leanjax.experiments.tune                                       # ~20-30 min on 2 CPU cores
    python -m leanjax.experiments.tune --config configs/tune/default.py:tiny    # every headline key: 3 min 25 s
        # wall (74 s CPU) at load ~12 (5 min 41 s at load ~11.5 before the population benchmark reused the studies'
        # compiled steps and `:tiny` dropped the larger model)
    python -m leanjax.experiments.tune --config.storage=postgresql://u@host/db --config.worker=I
        # started N times (I = 0..N-1, any machines): N workers share every study

Each trial trains the small CNN for up to `num_steps` steps and is scored by accuracy on 500 of the 4,000
training digits, held out at random. Budgets are equal (`n_trials` per study), 3 study seeds. Expected (default):
TPE+Hyperband reaches random search's best with about a third of its training steps or less, and a
population of 8 vmapped small CNNs trains >= 2x faster than the same 8 trials one after another.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                 # data order; trial t initialises its model from seed + t
    c.storage = ""             # '' = SQLite in the workdir; journal:/path.log; postgresql://...
    c.study_name = "tune"
    c.worker = 0               # give each concurrent worker its own number: it seeds the worker's sampler
    c.methods = ("random", "tpe", "tpe_hyperband")  # each is '<sampler>[_<pruner>]'
    c.study_seeds = (0, 1, 2)
    c.n_trials = 12
    c.n_startup_trials = 4     # random trials before TPE models the results
    c.num_steps = 150          # the most steps a trial trains (Hyperband's max resource)
    c.eval_every = 25          # rung granularity; Hyperband's min resource
    c.reduction_factor = 3
    c.batch_size = 32
    c.val_size = 500           # held out of MNIST-5k's 4,000 training digits, at random
    c.eval_batch_size = 250
    c.objective = "accuracy"   # maximised on the validation split
    c.heartbeat_interval = 5
    c.grace_period = 30

    c.cnn = ml_collections.ConfigDict(dict(features=(8, 16), dense=32, dropout=0.0))
    # Injected optimizer hyperparameters only, so every trial (and every population member) shares one
    # compiled step. `learning_rate` is the peak of a warmup + cosine schedule.
    c.space = ml_collections.ConfigDict(dict(
        learning_rate=("log", 1e-4, 1.0),
        weight_decay=("log", 1e-5, 1.0),
    ))
    c.warmup_steps = 20

    c.population = ml_collections.ConfigDict(dict(
        n=8,
        num_steps=60,
        # The same comparison on a model that fills the CPU better, to show where vmapping stops paying.
        large_features=(32, 64), large_dense=256, large_batch_size=128, large_num_steps=10,  # 0: skip it
    ))

    if arg == "tiny":
        c.study_seeds = (0,)
        c.n_trials = 4
        c.n_startup_trials = 2
        c.num_steps = 20
        c.eval_every = 10
        c.warmup_steps = 5
        c.population.n = 4
        c.population.num_steps = 20   # = num_steps: the population benchmark reuses the studies' compiled steps
        c.population.large_num_steps = 0
    else:
        common.check_variant(arg, "tiny")
    return c

"""Experiment `tune`: random search vs TPE vs TPE+Hyperband at equal budgets, and vmapped populations.

Every trial trains the MNIST-5k CNN from `seed + trial number` for up to `num_steps` steps with its
sampled learning rate and weight decay (injected optimizer hyperparameters: the whole experiment compiles
one train step) and is scored by accuracy on a held-out 500 of the training digits. Compute is training
steps summed over trials. For each study seed, the target is random search's final best; the headline
reports how many steps each method spent before first reaching it.

Studies live in `config.storage` (SQLite in the workdir by default), so a crashed run resumes without
repeating finished trials, and the same command started N times against one storage runs N workers.

The population part trains N trials as one vmapped program (`leanjax.tune.population`), each reported as
an Optuna trial, then the same N trials one after another, and reports the time ratio, on the tuned CNN
and on a larger one that fills the CPU better.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import optuna
from flax import nnx

from leanjax import data, losses, tune
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.models import CNN, functional
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step

# Search-space names -> the optimizer's injected hyperparameters. The optimizer's base learning rate is 1,
# so the injected scale *is* the peak learning rate.
INJECTED = {"learning_rate": "learning_rate_scale", "weight_decay": "weight_decay"}


@dataclass(frozen=True)
class Task:
    init: Callable[[dict, int], TrainState]   # (sampled params, seed) -> state
    step_fn: Callable                          # unjitted train step
    train_step: Callable                       # jitted, donated
    eval_step_fn: Callable                     # unjitted eval step
    evaluate: Callable[[Any], dict]            # params -> validation metrics
    batches: Callable[[], Any]                 # a fresh training iterator (same order for every trial)
    val: list


def _cnn(config, features, dense, seed):
    return CNN(10, features=tuple(features), dense=dense, dropout=config.cnn.dropout, image_size=28,
               rngs=nnx.Rngs(seed))


def _optimizer(config, num_steps: int):
    # Every trial sets its own rate and weight decay (`INJECTED`), so all of them share one compiled step.
    return _launch.config_optimizer(config, num_steps=num_steps, inject_learning_rate=True)


def build(config):
    """What `--audit` compiles: one trial's train step (the tuned CNN; the sampled hyperparameters are
    injected, so every trial runs this program) and its evaluation step."""
    apply_fn, params = functional(_cnn(config, config.cnn.features, config.cnn.dense, config.seed))
    return Build(params=params, loss=losses.classification_loss(apply_fn, inputs="image"),
                 metrics=losses.classification_metrics(apply_fn, inputs="image"),
                 tx=_optimizer(config, config.num_steps), train=data.load("mnist5k", "train"),
                 eval=data.load("mnist5k", "test"), seed=config.seed, batch_size=config.batch_size,
                 eval_batch_size=config.eval_batch_size, num_steps=config.num_steps)


def make_task(config, *, features, dense, batch_size: int, num_steps: int) -> Task:
    def model(seed):
        return _cnn(config, features, dense, seed)

    apply_fn, _ = functional(nnx.eval_shape(lambda: model(jax.random.key(0))))  # the graph only
    tx = _optimizer(config, num_steps)
    step_fn = make_train_step(losses.classification_loss(apply_fn, inputs="image"), tx, jit=False)
    eval_step_fn = make_eval_step(losses.classification_metrics(apply_fn, inputs="image"), jit=False)
    eval_step = jax.jit(eval_step_fn)
    train_src, val_src = data.holdout_split(data.load("mnist5k", "train"), config.val_size, config.seed)
    val = list(data.eval_batches(val_src, config.eval_batch_size))

    # Jitted, so a trial's initialisation is one compiled call rather than dozens of eager ops.
    init_params = jax.jit(lambda seed: functional(model(jax.random.key(seed)))[1])

    def init(params, seed):
        state = TrainState.create(init_params(seed), tx, jax.random.key(seed))
        return tune.set_hyperparams(state, **{INJECTED[k]: v for k, v in params.items()})

    return Task(init=init, step_fn=step_fn, train_step=jax.jit(step_fn, donate_argnums=(0,)),
                eval_step_fn=eval_step_fn, evaluate=lambda p: evaluate(eval_step, p, val),
                batches=lambda: data.batches(train_src, batch_size=batch_size, seed=config.seed), val=val)


def _method(name: str) -> tuple[str, str]:
    sampler, _, pruner = name.partition("_")
    return sampler, pruner or "none"


def run_studies(config, storage, task: Task) -> dict[str, list[list]]:
    """Run (or join, or resume) every method x seed study; return each study's finished trials."""
    key = config.objective

    def objective(trial, params):
        result = tune.train_trial(task.init(params, config.seed + trial.number), task.train_step,
                                  task.batches(), num_steps=config.num_steps, eval_fn=task.evaluate,
                                  eval_every=config.eval_every, report=tune.pruning_reporter(trial, key))
        return result.metrics[key], result.steps, result.stopped

    out = {}
    for method in config.methods:
        sampler, pruner = _method(method)
        out[method] = []
        for seed in config.study_seeds:
            study = tune.open_study(
                f"{config.study_name}-{method}-s{seed}", storage, sampler=sampler, pruner=pruner, seed=seed,
                min_resource=config.eval_every, max_resource=config.num_steps,
                reduction_factor=config.reduction_factor, n_startup_trials=config.n_startup_trials,
                worker=config.worker)
            t0 = time.perf_counter()
            ran = tune.run_worker(study, objective, space=dict(config.space), n_trials=config.n_trials,
                                  heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period)
            print(f"[tune] {method} seed {seed}: {len(ran)} trials here in {time.perf_counter() - t0:.0f}s, "
                  f"best {study.best_value:.4f}", flush=True)
            out[method].append(tune.finished(study))
    return out


def population_benchmark(config, storage, name: str, task: Task, *, features, dense, batch_size: int,
                         num_steps: int) -> dict:
    """The same N trials as one vmapped population (Optuna trials) and one after another, timed
    (`tune.compare_population`). `task` is `make_task(config, **the other keywords)`."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=config.seed))
    times = tune.compare_population(
        study, space=dict(config.space), n=config.population.n, init_state=lambda p, i: task.init(p, config.seed + i),
        step_fn=task.step_fn, eval_step_fn=task.eval_step_fn, batches=task.batches, val=task.val,
        num_steps=num_steps, eval_every=min(config.eval_every, num_steps), key=config.objective,
        heartbeat_interval=config.heartbeat_interval)
    return dict(n=config.population.n, num_steps=num_steps, batch_size=batch_size, features=list(features),
                dense=dense, **times)


def run(config, workdir):
    unknown = sorted(set(config.space) - set(INJECTED))
    if unknown:
        raise _launch.ConfigError(f"config.space: {unknown} are not injected optimizer hyperparameters; "
                                  f"this experiment searches {sorted(INJECTED)}")
    if "random" not in config.methods:
        raise _launch.ConfigError("config.methods must include 'random': it sets the compute-to-target goal")
    storage = tune.open_storage(tune.storage_url(config.storage, workdir),
                                heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period)
    tasks = {}

    def task_for(**problem) -> Task:
        """One `Task` (one set of compiled steps) per problem: a population benchmark of the studies' own
        problem (same model, batch and steps) reuses theirs."""
        key = repr(sorted(problem.items()))
        if key not in tasks:
            tasks[key] = make_task(config, **problem)
        return tasks[key]

    def benchmark(name, **problem):
        return population_benchmark(config, storage, name, task_for(**problem), **problem)

    p = config.population
    task = task_for(features=config.cnn.features, dense=config.cnn.dense, batch_size=config.batch_size,
                    num_steps=config.num_steps)
    studies = run_studies(config, storage, task)
    metrics = tune.compare_methods(studies, baseline="random")
    tune.plot_history(studies, f"{workdir}/history.png")

    small = benchmark(f"{config.study_name}-population", features=config.cnn.features, dense=config.cnn.dense,
                      batch_size=config.batch_size, num_steps=p.num_steps)
    metrics["population"] = {"small": small}
    if p.large_num_steps:  # 0: skip the larger model's comparison
        metrics["population"]["large"] = benchmark(
            f"{config.study_name}-population-large", features=p.large_features, dense=p.large_dense,
            batch_size=p.large_batch_size, num_steps=p.large_num_steps)
    headline = {f"{method}.{key}": metrics[method][f"mean_{key}"]
                for method, key in (("random", "best"), ("tpe", "best"), ("tpe_hyperband", "best"),
                                    ("tpe_hyperband", "compute_to_target"), ("random", "compute_to_target"))
                if method in metrics}
    headline["speedup_vs_random"] = headline["random.compute_to_target"] / headline["tpe_hyperband.compute_to_target"]
    headline["population.speedup"] = small["speedup"]
    headline["population.n"] = small["n"]
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("tune", run))

"""leanjax.tune: search spaces, the ask/tell worker loop (resume, compute accounting), pruned trials that
stop consuming steps, and vmapped populations equal to the same trials run one after another."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest

from leanjax import losses, tune
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import make_eval_step, make_train_step

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"learning_rate": ("log", 1e-3, 1e-1), "weight_decay": ("log", 1e-5, 1e-1)}


# --- a tiny classification problem: member i of a population must equal trial i run alone -----------------

def _apply(params, x, dropout_rng=None):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    if dropout_rng is not None:  # the per-member RNG must be carried and split like a sequential run's
        h = h * jax.random.bernoulli(dropout_rng, 0.8, h.shape) / 0.8
    return h @ params["w2"]


class Batches:
    def __init__(self, seed=0):
        self.i, self.seed = 0, seed

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.i])
        self.i += 1
        x = rng.normal(size=(16, 6)).astype(np.float32)
        return {"image": x, "label": (x[:, 0] + x[:, 1] > 0).astype(np.int32)}


EVAL = [next(Batches(seed=99)) for _ in range(2)]
TX = make_optimizer("adamw", learning_rate=1.0, total_steps=20, warmup_steps=3)
STEP_FN = make_train_step(losses.classification_loss(_apply), TX, jit=False)
TRAIN_STEP = jax.jit(STEP_FN)
EVAL_FN = make_eval_step(losses.classification_metrics(_apply), jit=False)


def _init(hp, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w1": jax.random.normal(k1, (6, 8)) * 0.5, "b1": jnp.zeros(8), "w2": jax.random.normal(k2, (8, 2)) * 0.5}
    state = TrainState.create(params, TX, jax.random.key(seed + 100))
    return tune.set_hyperparams(state, learning_rate_scale=hp["learning_rate"], weight_decay=hp["weight_decay"])


def _evaluate(params):
    from leanjax.step import evaluate
    return evaluate(jax.jit(EVAL_FN), params, EVAL)


HPS = [{"learning_rate": lr, "weight_decay": wd} for lr, wd in [(3e-2, 1e-4), (1e-1, 1e-2), (1e-2, 0.0), (5e-2, 3e-3)]]


def _sequential(i, num_steps=20):
    return tune.train_trial(_init(HPS[i], i), TRAIN_STEP, Batches(), num_steps=num_steps, eval_fn=_evaluate,
                            eval_every=5)


def test_population_members_equal_sequential_trials():
    pop_eval = tune.make_population_eval(EVAL_FN)
    result = tune.train_population(tune.stack([_init(hp, i) for i, hp in enumerate(HPS)]),
                                   tune.make_population_step(STEP_FN), Batches(), num_steps=20,
                                   eval_fn=lambda p: pop_eval(p, EVAL), eval_every=5)
    assert result.steps == [20] * 4 and not any(result.stopped)
    finals = []
    for i in range(len(HPS)):
        alone = _sequential(i)
        chex.assert_trees_all_close(result.states[i], alone.state, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.metrics[i]["loss"], alone.metrics["loss"], rtol=1e-5)
        finals.append(result.states[i].params["w1"])
    # The members really differ (different seeds and learning rates), so equality above means something.
    assert float(jnp.abs(finals[0] - finals[1]).max()) > 1e-2


@pytest.mark.slow  # ~50 s of compiles; the members-equal-sequential test stays in the default suite
def test_population_shrinks_when_members_are_pruned():
    pop_eval = tune.make_population_eval(EVAL_FN)
    seen = []

    def report(member, step, metrics):
        seen.append((member, step))
        return member in (1, 3)  # pruned at the first rung

    result = tune.train_population(tune.stack([_init(hp, i) for i, hp in enumerate(HPS)]),
                                   tune.make_population_step(STEP_FN), Batches(), num_steps=20,
                                   eval_fn=lambda p: pop_eval(p, EVAL), eval_every=5, report=report)
    assert result.steps == [20, 5, 20, 5] and result.stopped == [False, True, False, True]
    assert (1, 10) not in seen and (3, 10) not in seen  # pruned members left the program
    for i in (0, 2):  # survivors are unaffected by the shrink
        chex.assert_trees_all_close(result.states[i], _sequential(i).state, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(result.states[1], _sequential(1, num_steps=5).state, rtol=1e-5, atol=1e-6)


def test_population_errors():
    state = _init(HPS[0], 0)
    with pytest.raises(KeyError, match="injects"):
        tune.set_hyperparams(state, momentum=0.9)
    other = state.replace(params={**state.params, "b1": jnp.zeros(4)})
    with pytest.raises(ValueError, match="not shapes"):
        tune.stack([state, other])


def test_optimize_population_reports_each_member_as_a_trial():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.NopPruner())
    pop_eval = tune.make_population_eval(EVAL_FN)
    result = tune.optimize_population(study, space=SPACE, n=3, init_state=lambda hp, i: _init(hp, i),
                                      pop_step=tune.make_population_step(STEP_FN), batches=Batches(),
                                      num_steps=10, eval_fn=lambda p: pop_eval(p, EVAL), eval_every=5,
                                      key="accuracy", heartbeat_interval=1)
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.value for t in trials] == [m["accuracy"] for m in result.metrics]
    assert all(sorted(t.intermediate_values) == [5, 10] for t in trials)
    assert len({t.params["learning_rate"] for t in trials}) == 3


def test_pruned_trial_stops_consuming_steps():
    study = optuna.create_study(direction="maximize",
                                pruner=tune.make_pruner("sha", min_resource=5, max_resource=20))
    calls = []

    def counting_step(state, batch):
        calls.append(1)
        return TRAIN_STEP(state, batch)

    # A trial worse than its rung peers is pruned at the rung: a perfect trial passes the rungs first.
    done = study.ask()
    for step in (5, 10, 15, 20):
        done.report(1.0, step)
        assert not done.should_prune()  # records its rung for the pruner
    study.tell(done, 1.0)
    trial = study.ask()
    result = tune.train_trial(_init(HPS[0], 0), counting_step, Batches(), num_steps=20, eval_fn=_evaluate,
                              eval_every=5, report=tune.pruning_reporter(trial, "accuracy"))
    assert result.stopped and result.steps == 5 and len(calls) == 5


def test_space_errors():
    assert isinstance(tune.distributions(SPACE)["learning_rate"], optuna.distributions.FloatDistribution)
    for bad, match in [({"a": ("log", 0.0, 1.0)}, "low > 0"), ({"a": ("float", 1.0, 0.5)}, "low < high"),
                       ({"a": ("normal", 0, 1)}, "first item"), ({"a": ("int", 0.5, 3)}, "integer"),
                       ({}, "empty")]:
        with pytest.raises(ValueError, match=match):
            tune.distributions(bad)


# --- the worker loop, without JAX: a cheap objective --------------------------------------------------------

def _toy_objective(calls):
    def objective(trial, params):
        calls.append(trial.number)
        return (params["x"] - 0.3) ** 2, 10, False
    return objective


def test_resuming_a_study_does_not_repeat_finished_trials(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"

    def study():
        return tune.open_study("s", tune.open_storage(url), sampler="random", pruner="none", seed=0)

    first, second = [], []
    tune.run_worker(study(), _toy_objective(first), space={"x": ("float", 0, 1)}, n_trials=4)
    # The "crash": the process is gone, a new one opens the same storage and asks for a bigger budget.
    tune.run_worker(study(), _toy_objective(second), space={"x": ("float", 0, 1)}, n_trials=6)
    assert first == [0, 1, 2, 3] and second == [4, 5]
    trials = study().trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
    assert len({t.params["x"] for t in trials}) == 6  # the resumed sampler does not replay its draws
    assert tune.run_worker(study(), _toy_objective([]), space={"x": ("float", 0, 1)}, n_trials=6) == []


def test_a_failing_objective_fails_its_trial_and_reraises():
    study = optuna.create_study()

    def objective(trial, params):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tune.run_worker(study, objective, space={"x": ("float", 0, 1)}, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


def test_compute_to_target_sums_steps_in_trial_order():
    study = optuna.create_study(direction="maximize")
    for value, steps, state in [(0.5, 100, "c"), (0.4, 25, "p"), (0.8, 100, "c"), (0.9, 100, "c")]:
        t = study.ask()
        t.set_user_attr(tune.STEPS_ATTR, steps)
        if state == "p":
            t.report(value, steps)
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, value)
    trials = tune.finished(study)
    assert tune.best_so_far(trials) == [(100, 0.5), (125, 0.5), (225, 0.8), (325, 0.9)]
    assert tune.compute_to_target(trials, 0.8) == 225
    assert tune.compute_to_target(trials, 0.95) is None
    # A pruned trial's intermediate value never counts as reaching the target.
    assert tune.compute_to_target(trials, 0.45) == 100


def test_storage_specs(tmp_path):
    assert isinstance(tune.open_storage(str(tmp_path / "a.log")), optuna.storages.JournalStorage)
    assert isinstance(tune.open_storage(f"journal:{tmp_path}/b"), optuna.storages.JournalStorage)
    assert isinstance(tune.open_storage(str(tmp_path / "c.db")), optuna.storages.RDBStorage)
    assert tune.storage_url("", str(tmp_path)) == f"sqlite:///{tmp_path}/study.db"
    with pytest.raises(ValueError, match="grace_period"):
        tune.open_storage(str(tmp_path / "d.db"), heartbeat_interval=5, grace_period=5)
    with pytest.raises(ValueError, match="use sqlite"):
        tune.open_storage(str(tmp_path / "e"))
    with pytest.raises(ValueError, match="unknown sampler"):
        tune.make_sampler("bohb", 0)
    with pytest.raises(ValueError, match="min_resource"):
        tune.make_pruner("hyperband", min_resource=10, max_resource=10)


def _trial(value, steps, state=optuna.trial.TrialState.COMPLETE):
    return optuna.trial.create_trial(value=value if state == optuna.trial.TrialState.COMPLETE else None,
                                     state=state, user_attrs={tune.STEPS_ATTR: steps},
                                     distributions={}, params={})


def test_compare_methods_charges_unreached_seeds_their_budget(tmp_path):
    pruned = optuna.trial.TrialState.PRUNED
    studies = {"random": [[_trial(0.5, 10), _trial(0.8, 10)], [_trial(0.6, 10), _trial(0.7, 10)]],
               "tpe": [[_trial(0.9, 10), _trial(0.2, 4, pruned)], [_trial(0.1, 10), _trial(0.2, 10)]]}
    out = tune.compare_methods(studies, baseline="random")
    assert out["targets"] == [0.8, 0.7]
    assert out["random"]["compute_to_target"] == [20, 20] and out["random"]["mean_compute_to_target"] == 20
    # tpe reaches 0.8 on seed 0 after 10 steps, never reaches 0.7 on seed 1: charged its 20 steps.
    assert out["tpe"]["compute_to_target"] == [10, None] and out["tpe"]["reached_target"] == 1
    assert out["tpe"]["mean_compute_to_target"] == 15 and out["tpe"]["total_steps"] == [14, 20]
    assert out["tpe"]["pruned"] == [1, 0] and out["tpe"]["mean_best"] == pytest.approx(0.55)
    tune.plot_history(studies, str(tmp_path / "history.png"))
    assert (tmp_path / "history.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no 'grid' studies"):
        tune.compare_methods(studies, baseline="grid")


def test_compare_population_times_the_population_and_its_sequential_twins():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(HPS[0])  # a trial from before: not one of the population's
    study.optimize(lambda t: 0.0, n_trials=1)
    space = {"learning_rate": ("log", 1e-2, 1e-1), "weight_decay": ("log", 1e-5, 1e-2)}
    out = tune.compare_population(study, space=space, n=3, init_state=_init, step_fn=STEP_FN, eval_step_fn=EVAL_FN,
                                  batches=Batches, val=EVAL, num_steps=10, eval_every=5, key="accuracy")
    assert len(study.trials) == 4  # the population's three, told as Optuna trials
    assert out["max_abs_metric_diff"] < 1e-6  # each member equals its sequential twin
    assert out["vmapped_s"] > 0 and out["sequential_s"] > 0
    assert out["speedup"] == pytest.approx(out["sequential_s"] / out["vmapped_s"])

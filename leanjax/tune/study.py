"""Optuna studies driven by ask/tell: samplers, pruners, a crash-tolerant worker loop, compute accounting.

Samplers: random search, TPE (Bergstra et al., "Algorithms for Hyper-Parameter Optimization", NeurIPS
2011) and Optuna's GP sampler. Pruners: Hyperband (Li et al., arXiv:1603.06560) and its building block,
successive halving (asynchronous: ASHA, arXiv:1810.05934). A trial reports its evaluation at rungs
(`trial.report`) and stops when `trial.should_prune()`.

`run_worker` is the loop each worker process runs; any number of them, on one machine or several, share a
study through its storage. A study's budget is a number of trials; a worker asks for a new trial while
fewer than `n_trials` are complete, pruned or running, so a resumed study does not repeat finished trials
and a trial failed by a dead worker is replaced by a fresh one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from leanjax.tune.space import distributions
from leanjax.tune.storage import fail_stale_trials, heartbeat

STEPS_ATTR = "steps"  # user attribute: training steps the trial consumed (the compute unit)
_CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def make_sampler(name: str, seed: int, *, n_startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """'random', 'tpe' (multivariate, so correlated parameters are modelled jointly) or 'gp'."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True,
                                          constant_liar=True)  # parallel workers avoid the same point
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)  # needs torch
    raise ValueError(f"unknown sampler {name!r}: use 'random', 'tpe' or 'gp'")


def make_pruner(name: str, *, min_resource: int, max_resource: int,
                reduction_factor: int = 3) -> optuna.pruners.BasePruner:
    """'none', 'hyperband' or 'sha' (successive halving); resources are training steps."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if not 0 < min_resource < max_resource:
        raise ValueError(f"need 0 < min_resource < max_resource, got {min_resource} and {max_resource}")
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource, max_resource, reduction_factor)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource, reduction_factor)
    raise ValueError(f"unknown pruner {name!r}: use 'none', 'hyperband' or 'sha'")


def open_study(name: str, storage: optuna.storages.BaseStorage, *, sampler: str, pruner: str, seed: int,
               min_resource: int = 1, max_resource: int = 1, reduction_factor: int = 3,
               n_startup_trials: int = 10, direction: str = "maximize", worker: int = 0) -> optuna.Study:
    """Create or join study `name`, with a sampler whose random stream is fresh for this process.

    A sampler seeded only by `seed` would replay its first draws after a resume, and concurrent workers
    would all draw the same points: the stream is seeded by (seed, worker, trials already in the study),
    so an uninterrupted single worker is reproducible and a resumed or second one samples new points.
    """
    existing = 0
    if name in optuna.get_all_study_names(storage):
        existing = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    stream = int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0])
    return optuna.create_study(
        study_name=name, storage=storage, direction=direction, load_if_exists=True,
        sampler=make_sampler(sampler, stream, n_startup_trials=n_startup_trials),
        pruner=make_pruner(pruner, min_resource=min_resource, max_resource=max_resource,
                           reduction_factor=reduction_factor))


def run_worker(study: optuna.Study, objective: Callable[[optuna.Trial, dict], tuple[float, int, bool]], *,
               space: Mapping, n_trials: int, heartbeat_interval: float = 5.0, grace_period: float = 20.0,
               wait: bool = True) -> list[int]:
    """Run trials of `study` until it holds `n_trials` complete or pruned ones; return the numbers run here.

    `objective(trial, params) -> (value, steps, pruned)` trains one trial, reporting to `trial` at rungs;
    `steps` is the training steps it took (stored as a user attribute: the compute unit). With `wait`, a worker
    whose budget is claimed stays until the other workers' trials finish, so it can replace one whose
    worker died. Workers may overshoot `n_trials` by at most (workers - 1): counting and asking are two
    storage transactions.
    """
    dists = distributions(space)
    ran = []
    while True:
        fail_stale_trials(study, grace_period)
        trials = study.get_trials(deepcopy=False, states=_CLAIMED)
        if len(trials) >= n_trials:
            if not wait or not any(t.state == TrialState.RUNNING for t in trials):
                return ran
            time.sleep(min(heartbeat_interval, 1.0))
            continue
        trial = ask(study, dists)
        ran.append(trial.number)
        with heartbeat(study, trial, heartbeat_interval):
            try:
                value, steps, pruned = objective(trial, trial.params)
            except Exception:
                _tell(study, trial, TrialState.FAIL, None)
                raise
            trial.set_user_attr(STEPS_ATTR, int(steps))
        # A pruned trial's value is its last reported one (Optuna takes it from the intermediates).
        _tell(study, trial, *((TrialState.PRUNED, None) if pruned else (TrialState.COMPLETE, value)))


def ask(study: optuna.Study, dists: Mapping) -> optuna.Trial:
    """`study.ask(dists)`, without Optuna's warning that heartbeats expect `optimize()`: ours beat from
    `leanjax.tune.storage.heartbeat` around every trial."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask(dists)


def _tell(study, trial, state, values):
    try:
        study.tell(trial, values, state=state)
    except UpdateFinishedTrialError:  # a worker judged us dead (a stall longer than the grace period)
        print(f"trial {trial.number} was failed by another worker; its result is dropped", flush=True)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Complete and pruned trials in the order they were asked."""
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                  key=lambda t: t.number)


def best_so_far(trials: Sequence[FrozenTrial], direction: str = "maximize") -> list[tuple[int, float]]:
    """(cumulative training steps, best complete value so far) after each trial, in trial order."""
    better = max if direction == "maximize" else min
    out, steps, best = [], 0, None
    for t in trials:
        steps += int(t.user_attrs[STEPS_ATTR])
        if t.state == TrialState.COMPLETE:
            best = t.value if best is None else better(best, t.value)
        out.append((steps, best))
    return out


def compute_to_target(trials: Sequence[FrozenTrial], target: float, direction: str = "maximize") -> int | None:
    """Training steps summed over trials until a complete trial reaches `target`; None if none does."""
    reached = (lambda v: v >= target) if direction == "maximize" else (lambda v: v <= target)
    for steps, best in best_so_far(trials, direction):
        if best is not None and reached(best):
            return steps
    return None


def compare_methods(studies: Mapping[str, Sequence[Sequence[FrozenTrial]]], baseline: str = "random",
                    direction: str = "maximize") -> dict:
    """Search methods compared at equal budgets, study seed by study seed, against a baseline method.

    Args:
      studies: method -> one list of finished trials per study seed (the same seeds, in the same order, for
        every method); `STEPS_ATTR` counts each trial's training steps.
      baseline: the method whose final best on each seed is that seed's target.
      direction: "maximize" or "minimize" the trials' values.

    Returns:
      `{"targets": [per-seed target], method: {"best", "total_steps", "compute_to_target", "reached_target",
      "pruned", "mean_best", "mean_compute_to_target"}}`: per seed the best value, the training steps spent,
      the steps spent until the target was first reached (None: never), how many seeds reached it, how many
      trials were pruned; then the means over seeds, a seed that never reaches the target charged its whole
      budget (so that mean is a lower bound).
    """
    if baseline not in studies:
        raise ValueError(f"no {baseline!r} studies to set the targets; methods: {sorted(studies)}")
    better = max if direction == "maximize" else min

    def best(trials):
        return better(t.value for t in trials if t.state == TrialState.COMPLETE)

    targets = [best(trials) for trials in studies[baseline]]
    out: dict = {"targets": targets}
    for method, per_seed in studies.items():
        bests = [best(trials) for trials in per_seed]
        totals = [best_so_far(trials, direction)[-1][0] for trials in per_seed]
        to_target = [compute_to_target(trials, target, direction) for trials, target in zip(per_seed, targets)]
        charged = [s if s is not None else total for s, total in zip(to_target, totals)]
        out[method] = {"best": bests, "total_steps": totals, "compute_to_target": to_target,
                       "reached_target": sum(s is not None for s in to_target),
                       "pruned": [sum(t.state == TrialState.PRUNED for t in trials) for trials in per_seed],
                       "mean_best": float(np.mean(bests)), "mean_compute_to_target": float(np.mean(charged))}
    return out


def plot_history(studies: Mapping[str, Sequence[Sequence[FrozenTrial]]], path: str,
                 direction: str = "maximize") -> None:
    """Writes a PNG of each study's best value so far against training steps summed over trials.

    Args:
      studies: method -> one list of finished trials per study seed (one line per seed, a colour per method).
      path: the PNG to write.
      direction: "maximize" or "minimize".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=90)
    for color, (method, per_seed) in zip(("tab:gray", "tab:blue", "tab:red", "tab:green"), studies.items()):
        for i, trials in enumerate(per_seed):
            points = [(s, b) for s, b in best_so_far(trials, direction) if b is not None]
            ax.step(*zip(*points), where="post", color=color, alpha=0.8, lw=1.2, label=method if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("training steps summed over trials")
    ax.set_ylabel("best value so far")
    ax.set_title("optimisation history (one line per study seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pruning_reporter(trial: optuna.Trial, key: str) -> Callable[[int, Mapping[str, float]], bool]:
    """`report(step, metrics) -> stop` for `train_trial`: report `metrics[key]` and ask the pruner."""
    def report(step: int, metrics: Mapping[str, float]) -> bool:
        if key not in metrics:
            raise KeyError(f"the evaluation returned {sorted(metrics)}; the objective needs {key!r}")
        trial.report(float(metrics[key]), step)
        return trial.should_prune()

    return report

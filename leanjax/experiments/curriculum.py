"""Experiment `curriculum`: does ordering the data speed up convergence? Always against random order.

Two tasks, each over several seeds, every arm seeing the same number of examples (or tokens) per step:

- `mnist`: an MLP on MNIST-5k. Difficulty is a reference model's per-example score (`score_source`
  after a short proxy run); `curriculum` samples easiest-first under a pacing function (Platanios et
  al. 2019, arXiv:1903.09848), `anti` hardest-first under the same pacing, `random` uniformly.
- `lm`: a char Transformer on Shakespeare. `length_warmup` (Li et al. 2022, arXiv:2108.06084) trains on
  the random arm's very batches cut into shorter windows (32 -> 64 -> 128 tokens: as many tokens per
  step, three compiled shapes, counted); `loss_curriculum` samples windows easiest-first by a proxy
  model's loss.

Steps to target: the first evaluation at which an arm reaches the target (by default the worst final
metric of the random seeds, so every random seed reaches it); speedup = random steps / curriculum steps
per seed (0 when the curriculum never reaches the target). Wall time counts compilation: each arm has its
own jitted step (shared by its seeds), so `compiles` is what that arm costs the compiler. The arms need
per-step shapes and samplers that `fit` does not have, so this module runs a short loop of its own (no
checkpoints: each run takes seconds to minutes).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from flax import nnx

from leanjax import data, losses
from leanjax.data.curriculum import CurriculumSampler, difficulty_order, length_schedule, random_order, split_windows
from leanjax.data.scores import score_source
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.models import MLP, CausalLM, TransformerConfig, functional
from leanjax.step import evaluate, make_eval_step
from leanjax.train import StepsPerArm, compare_to_baseline, plot_arm_curves, train_with_curve


def _mnist_problem(c):
    """`(model(seed) -> (apply_fn, params), tx, train, test)` of the `mnist` task."""
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    train = data.ArraySource({k: np.stack([train[i][k] for i in range(len(train))]) for k in ("image", "label")})

    def model(seed):
        return functional(MLP(784, tuple(c.hidden), 10, dropout=c.dropout, rngs=nnx.Rngs(seed)))

    tx = _launch.config_optimizer(c)
    return model, tx, train, test


def _lm_problem(c):
    """`(model(seed) -> (apply_fn, params), tx, train, valid)` of the `lm` task: `c.train_windows` random
    windows of the train split."""
    full = data.lm_source("shakespeare", "train", seq_len=c.seq_len)
    pool = np.random.default_rng(0).choice(len(full), min(c.train_windows, len(full)), replace=False)
    train = data.ArraySource({k: np.stack([full[int(i)][k] for i in pool]) for k in ("inputs", "targets")})
    valid = data.lm_source("shakespeare", "validation", seq_len=c.seq_len)

    def model(seed):
        return functional(CausalLM(TransformerConfig(
            vocab_size=full.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_layers,
            num_heads=c.num_heads, intermediate_size=4 * c.hidden_size, max_position_embeddings=c.seq_len,
            type_vocab_size=0, dropout=0.0, causal=True), rngs=nnx.Rngs(seed)))

    tx = _launch.config_optimizer(c)
    return model, tx, train, valid


def build(config):
    """What `--audit` compiles: the train and evaluation steps of the headline task's model (`config.headline`)
    at its full batch shape (every arm trains this model; `length_warmup` also at shorter windows)."""
    task = config.headline.split("/")[0]
    c = config[task]
    model, tx, train, evaluation = (_mnist_problem if task == "mnist" else _lm_problem)(c)
    apply_fn, params = model(0)
    if task == "mnist":
        loss, metrics, eval_batch_size = losses.classification_loss, losses.classification_metrics, 500
    else:
        loss, metrics, eval_batch_size = losses.lm_loss, losses.lm_metrics, c.batch_size
    return Build(params=params, loss=loss(apply_fn), metrics=metrics(apply_fn), tx=tx, train=train,
                 eval=evaluation, seed=0, batch_size=c.batch_size, eval_batch_size=eval_batch_size,
                 num_steps=c.num_steps)


def _mnist(c, seeds):
    model, tx, train, test = _mnist_problem(c)
    apply_fn, _ = model(0)
    loss_fn = losses.classification_loss(apply_fn)
    eval_step = make_eval_step(losses.classification_metrics(apply_fn))
    eval_fn = lambda p: evaluate(eval_step, p, data.eval_batches(test, 500))["accuracy"]  # noqa: E731
    steps = StepsPerArm(loss_fn, tx)

    # Difficulty: a proxy model trained briefly in random order, then scored on every training example.
    _, ref_params = model(10_000)
    ref_it = data.batches(train, batch_size=c.batch_size, seed=10_000)
    ref_state, *_ = train_with_curve(steps("random"), ref_params, tx, 10_000, lambda s: next(ref_it), c.ref_steps,
                           eval_fn, c.ref_steps)
    difficulty = score_source(lambda p, b: apply_fn(p, b["image"]), ref_state.params, train,
                              batch_size=500)[c.score]
    orders = {"random": lambda seed: (random_order(len(train), seed), "none"),
              "curriculum": lambda seed: (difficulty_order(difficulty), c.pacing),
              "anti": lambda seed: (difficulty_order(difficulty, anti=True), c.pacing)}
    runs = {}
    for arm, seed in itertools.product(c.arms, seeds):
        order, pacing = orders[arm](seed)
        sampler = CurriculumSampler(train, order, batch_size=c.batch_size, total_steps=c.pacing_steps,
                                    seed=seed, pacing=pacing, c0=c.c0)
        _, params = model(seed)
        runs.setdefault(arm, []).append(train_with_curve(steps(arm), params, tx, seed, lambda s: next(sampler),
                                               c.num_steps, eval_fn, c.eval_every)[1:])
    return runs, steps.compiles, True, {"score": c.score, "reference_steps": c.ref_steps}


def _lm(c, seeds):
    model, tx, train, valid = _lm_problem(c)
    apply_fn, _ = model(0)
    loss_fn = losses.lm_loss(apply_fn)
    eval_step = make_eval_step(losses.lm_metrics(apply_fn))
    eval_fn = lambda p: evaluate(  # noqa: E731
        eval_step, p, itertools.islice(data.eval_batches(valid, c.batch_size), c.eval_batches))["loss"]
    buckets = tuple(c.buckets)
    steps = StepsPerArm(loss_fn, tx)

    _, ref_params = model(10_000)
    ref_it = data.batches(train, batch_size=c.batch_size, seed=10_000)
    ref_state, *_ = train_with_curve(steps("random"), ref_params, tx, 10_000, lambda s: next(ref_it), c.ref_steps,
                           eval_fn, c.ref_steps)
    difficulty = score_source(lambda p, b: apply_fn(p, b["inputs"]), ref_state.params, train,
                              batch_size=4 * c.batch_size, label_key="targets")["loss"]

    def feeder(arm, seed):
        if arm == "loss_curriculum":
            sampler = CurriculumSampler(train, difficulty_order(difficulty), batch_size=c.batch_size,
                                        total_steps=c.pacing_steps, seed=seed, pacing=c.pacing, c0=c.c0)
            return lambda s: {k: v for k, v in next(sampler).items() if k != "index"}
        it = data.batches(train, batch_size=c.batch_size, seed=seed)
        if arm == "random":
            return lambda s: next(it)
        if arm == "length_warmup":
            return lambda s: split_windows(next(it), length_schedule(s, c.length_warmup_steps, buckets))
        raise _launch.ConfigError(f"config.lm.arms: unknown arm {arm!r}; use random, length_warmup, loss_curriculum")

    runs = {}
    for arm, seed in itertools.product(c.arms, seeds):
        _, params = model(seed)
        runs.setdefault(arm, []).append(train_with_curve(steps(arm), params, tx, seed, feeder(arm, seed), c.num_steps,
                                               eval_fn, c.eval_every)[1:])
    return runs, steps.compiles, False, {"buckets": list(buckets), "train_windows": len(train),
                         "tokens_per_step": c.batch_size * c.seq_len}


def _summarise(runs, compiles, higher_is_better, target):
    """Per-arm figures against the random arm, seed by seed, plus what each arm cost the compiler."""
    out = compare_to_baseline({arm: [curve for curve, _ in rs] for arm, rs in runs.items()},
                              higher_is_better=higher_is_better, target=target)
    for arm, rs in runs.items():
        out[arm].update(compiles=compiles[arm], wall_s=float(np.mean([w for _, w in rs])))
    return out


def _plot(results, curves, path):
    panels = {task: {arm: [curve for curve, _ in rs] for arm, rs in runs.items()} for task, runs in curves.items()}
    # Loss curves start far above where they end: clip the top so that the arms' differences show.
    ylims = {"lm": (None, float(np.percentile([m for rs in panels["lm"].values() for c in rs for _, m in c], 90))
                    + 0.2)} if "lm" in panels else {}
    plot_arm_curves(panels, path, targets={task: results[task]["target"] for task in panels},
                    ylabels={"mnist": "eval accuracy", "lm": "eval loss"}, ylims=ylims)


def run(config, workdir):
    seeds = list(range(config.num_seeds))
    tasks = {"mnist": lambda: _mnist(config.mnist, seeds), "lm": lambda: _lm(config.lm, seeds)}
    results, curves = {}, {}
    for task in config.tasks:
        runs, compiles, higher, extra = tasks[task]()
        results[task] = {**_summarise(runs, compiles, higher, config[task].target), **extra}
        curves[task] = runs
        print(f"[curriculum/{task}] " + ", ".join(
            f"{arm}: final {results[task][arm]['final_metric']:.4f}, speedup {results[task][arm]['speedup_mean']:.2f}"
            for arm in runs), flush=True)
    _plot(results, curves, f"{workdir}/curves.png")
    task, arm = config.headline.split("/")
    chosen, base = results[task][arm], results[task]["random"]
    headline = {"curriculum.steps_to_target": chosen["steps_to_target"],
                "random.steps_to_target": base["steps_to_target"],
                "speedup": chosen["speedup_mean"], "speedup_low": chosen["speedup_low"],
                "curriculum.final_metric": chosen["final_metric"], "random.final_metric": base["final_metric"]}
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in headline.values()):
        print(f"[curriculum] {config.headline} did not reach the target on every seed", flush=True)
    return {**results, "headline_arm": config.headline, "seeds": seeds}, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("curriculum", run))

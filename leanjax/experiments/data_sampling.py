"""Experiment `data_sampling`: train on less data, chosen by per-example scores, against random choice.

On MNIST-5k with an MLP, over several seeds:

- `full`: every example, trained with the canonical loop (`fit`) on a `ScoredState`, so the train step
  records each example's loss / EL2N / forgetting count for free (Paul et al. 2021, arXiv:2107.07075;
  Toneva et al. 2019, arXiv:1812.05159). Those scores, averaged over the seeds' full runs, rank the data.
- `subset.<mode>`: the `fraction` of examples with the hardest / easiest / middle scores, class
  balanced, trained for as many epochs as `full` (so `fraction` of its steps); `random_subset`: a random
  class-balanced subset of the same size, always measured alongside.
- `dynamic`: InfoBatch (arXiv:2303.04947): each epoch skips a `prune_ratio` share of the examples whose
  last loss is below the mean and up-weights the rest of them, full data for the last epochs. The epoch
  plan depends on the live score store, so this arm runs a short loop of its own.
- `dedup`: SemDeDup (arXiv:2303.09540) on MiniLM sentence embeddings of tweets: the fraction removed.

All arms use a constant learning rate, so a run that takes fewer steps is not also handed a different
schedule.
"""

from __future__ import annotations

import itertools
import math
import os
import time

import jax
import numpy as np
from flax import nnx

from leanjax import data, losses
from leanjax.data.sampling import infobatch_plan, plan_batches, random_subset, select_by_score, semantic_dedup
from leanjax.data.scores import ScoredState, ScoreStore, indexed, scored_classification_loss, with_scores
from leanjax.data.source import to_str
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.models import MLP, functional, l2_normalize, mean_pool
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit


class _Trainer:
    """The MLP, its scored train step (compiled once, shared by every arm) and evaluation."""

    def __init__(self, c, test):
        self.c = c
        self.apply_fn, _ = self.model(0)
        self.tx = _launch.config_optimizer(c)
        self.step = with_scores(make_train_step(scored_classification_loss(self.apply_fn), self.tx, jit=False))
        eval_step = make_eval_step(losses.classification_metrics(self.apply_fn))
        self.evaluate = lambda params: evaluate(eval_step, params, data.eval_batches(test, 500))["accuracy"]

    def model(self, seed):
        return functional(MLP(784, tuple(self.c.hidden), 10, dropout=self.c.dropout, rngs=nnx.Rngs(seed)))

    def state(self, seed, num_examples):
        return ScoredState(TrainState.create(self.model(seed)[1], self.tx, jax.random.key(seed)),
                           ScoreStore.create(num_examples))

    def fit(self, source, seed, workdir):
        """`epochs` passes over `source` with `fit`; returns (final state, accuracy, steps)."""
        steps = self.c.epochs * (len(source) // self.c.batch_size)
        result = fit(self.state(seed, len(source)), self.step,
                     data.batches(indexed(source), batch_size=self.c.batch_size, seed=seed),
                     num_steps=steps, workdir=workdir, log_every=max(1, steps // 10), progress=False,
                     eval_fn=lambda p: {"accuracy": self.evaluate(p)}, keep_checkpoints=1)
        return result.state, result.last_eval["accuracy"], steps

    def infobatch(self, source, seed):
        """InfoBatch epochs over `source`; returns (accuracy, steps, full-data steps, kept per epoch)."""
        c, arrays = self.c, source.arrays
        state, rng = self.state(seed, len(source)), np.random.default_rng(seed)
        steps = full_steps = 0
        kept = []
        anneal_from = math.ceil(c.epochs * (1 - c.anneal_fraction))
        for epoch in range(c.epochs):
            scores = jax.device_get(state.scores)
            ratio = c.prune_ratio if 0 < epoch < anneal_from else 0.0
            ids, weights = infobatch_plan(scores.loss, ratio, rng, seen=scores.visits > 0)
            kept.append(len(ids) / len(source))
            for batch_ids, batch_weights in plan_batches(ids, weights, c.batch_size):
                batch = {k: v[batch_ids] for k, v in arrays.items()}
                state, _ = self.step(state, {**batch, "index": batch_ids.astype(np.int32), "weight": batch_weights})
                steps += 1
            full_steps += math.ceil(len(source) / c.batch_size)
        return self.evaluate(state.params), steps, full_steps, kept


def _embed_texts(texts, max_len, batch_size):
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 sentence embeddings (the model's own pooling)."""
    from leanjax.weights import load_pretrained

    apply_fn, params = functional(load_pretrained("minilm").model)
    encode = jax.jit(lambda p, ids, mask: l2_normalize(mean_pool(apply_fn(p, ids, mask), mask)))
    # One shape for every batch (the last is padded) keeps it to one compilation.
    padded = list(texts) + [""] * (-len(texts) % batch_size)
    ids, mask = data.encode_batch(data.minilm_tokenizer(), padded, max_len)
    out = [np.asarray(encode(params, ids[i:i + batch_size], mask[i:i + batch_size]))
           for i in range(0, len(padded), batch_size)]
    return np.concatenate(out)[:len(texts)]


def _dedup(c):
    tweets = data.load("tweets", "train")
    texts = [tweets[i]["text"] for i in range(min(c.num_texts, len(tweets)))]
    t0 = time.perf_counter()
    embeddings = _embed_texts(texts, c.max_len, c.batch_size)
    embed_s = time.perf_counter() - t0
    kept = semantic_dedup(embeddings, c.threshold, num_clusters=c.num_clusters)
    removed = sorted(set(range(len(texts))) - set(kept.tolist()))
    return {"num_texts": len(texts), "kept": len(kept), "removed_fraction": 1 - len(kept) / len(texts),
            "threshold": c.threshold, "embed_s": embed_s,
            "examples_removed": [to_str(texts[i])[:120] for i in removed[:5]]}


def build(config):
    """What `--audit` compiles: the MLP's train step on full data (the plain loss: the arms' scored step adds
    per-example score bookkeeping to it) and its evaluation step."""
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    trainer = _Trainer(config, test)
    apply_fn, params = trainer.model(0)
    return Build(params=params, loss=losses.classification_loss(apply_fn),
                 metrics=losses.classification_metrics(apply_fn), tx=trainer.tx, train=train, eval=test, seed=0,
                 batch_size=config.batch_size, eval_batch_size=500,
                 num_steps=config.epochs * (len(train) // config.batch_size))


def run(config, workdir):
    c = config
    raw_train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    train = data.ArraySource({k: np.stack([raw_train[i][k] for i in range(len(raw_train))])
                              for k in ("image", "label")})
    labels = train.arrays["label"]
    trainer = _Trainer(c, test)
    seeds = list(range(c.num_seeds))
    acc = {}

    full_states = []
    for seed in seeds:
        state, a, full_steps = trainer.fit(train, seed, os.path.join(workdir, f"full/seed{seed}"))
        full_states.append(jax.device_get(state.scores))
        acc.setdefault("full", []).append(a)
    scores = np.mean([getattr(s, c.score) for s in full_states], axis=0)

    subsets = {f"subset.{m}": select_by_score(scores, c.fraction, m, labels=labels) for m in c.modes}
    for (name, ids), seed in itertools.product(subsets.items(), seeds):
        source = data.ArraySource({k: v[ids] for k, v in train.arrays.items()})
        acc.setdefault(name, []).append(trainer.fit(source, seed, os.path.join(workdir, f"{name}/seed{seed}"))[1])
    for seed in seeds:
        ids = random_subset(len(train), c.fraction, seed=1000 + seed, labels=labels)
        source = data.ArraySource({k: v[ids] for k, v in train.arrays.items()})
        acc.setdefault("random_subset", []).append(
            trainer.fit(source, seed, os.path.join(workdir, f"random_subset/seed{seed}"))[1])
    dynamic_steps = []
    for seed in seeds:
        a, steps, dyn_full_steps, kept = trainer.infobatch(train, seed)
        acc.setdefault("dynamic", []).append(a)
        dynamic_steps.append(steps)
    dedup = _dedup(c.dedup)

    table = {name: {"accuracy": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v}
             for name, v in acc.items()}
    compute_saved = 1 - float(np.mean(dynamic_steps)) / dyn_full_steps
    fraction_kept = len(subsets[f"subset.{c.mode}"]) / len(train)
    _plot(table, compute_saved, fraction_kept, os.path.join(workdir, "accuracy.png"))
    headline = {"fraction_kept": fraction_kept, "subset.accuracy": table[f"subset.{c.mode}"]["accuracy"],
                "full.accuracy": table["full"]["accuracy"],
                "random_subset.accuracy": table["random_subset"]["accuracy"],
                "dynamic.compute_saved": compute_saved, "dynamic.accuracy": table["dynamic"]["accuracy"],
                "dedup.removed_fraction": dedup["removed_fraction"]}
    metrics = {"accuracy": table, "score": c.score, "subset_mode": c.mode, "full_steps": full_steps,
               "dynamic_steps": dynamic_steps, "dynamic_full_steps": dyn_full_steps,
               "dynamic_kept_per_epoch_last_seed": kept, "dedup": dedup}
    return metrics, headline


def _plot(table, compute_saved, fraction_kept, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    means = [table[n]["accuracy"] for n in names]
    spread = [[m - min(table[n]["per_seed"]) for n, m in zip(names, means)],
              [max(table[n]["per_seed"]) - m for n, m in zip(names, means)]]
    ax.bar(names, means, yerr=spread, capsize=3, color=["C0" if n == "full" else "C1" for n in names])
    ax.set_ylim(min(min(table[n]["per_seed"]) for n in names) - 0.02, 1.0)
    ax.set(ylabel="test accuracy (mean, min-max)",
           title=f"MNIST-5k MLP: subsets keep {fraction_kept:.0%}; InfoBatch saves {compute_saved:.0%} of steps")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(_launch.main("data_sampling", run))

"""Experiment `finetune`: what does starting from open weights save? MiniLM fine-tuned vs trained from scratch.

Both arms are the same `SequenceClassifier` (all-MiniLM-L6-v2's BERT encoder, masked mean pooling,
dropout, a linear head over the 3 tweet sentiments) with the same head init, the same MiniLM tokenizer,
the same batches in the same order (one data seed), the same dropout keys and the same number of steps.
They differ only in the encoder's starting point: the shipped MiniLM weights (`leanjax.weights.
load_pretrained`) or the model's random init. Each arm trains with the canonical loop (`fit`), with its
own peak learning rate (fine-tuning wants a small one, from-scratch training a larger one: giving both
the fine-tuning rate would handicap the control).

Headline (Howard & Ruder 2018, https://arxiv.org/abs/1801.06146, measure the same gap):
`finetuned_accuracy`, `scratch_accuracy` (each arm's final evaluation), `steps_to_match_scratch` (the
first evaluation step at which fine-tuning reaches scratch's final accuracy; its resolution is
`eval_every`), `speedup` = scratch's steps (the budget) / that, `compute_saved` = 1 - 1/speedup. When
fine-tuning never reaches scratch's accuracy these three are None.

`config.num_layers < 6` keeps MiniLM's first layers only (the `:tiny` variant uses 1), for fast checks.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from leanjax import data, losses
from leanjax.experiments import _launch, _minilm
from leanjax.experiments._build import Build
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit, plot_curves, steps_to_target
from leanjax.trees import count_params

INPUTS = _minilm.INPUTS
ARMS = ("finetuned", "scratch")


def build(config):
    """The fine-tuned arm's params, loss, metrics, optimizer and data; `scratch_params` is the control's start."""
    pretrained, _, apply_fn, scratch, finetuned = _minilm.classifier(
        config.num_layers, dropout=config.dropout, seed=config.seed)

    tokenizer = pretrained.tokenizer
    # A list of examples is a `Source` (len + getitem): tokenized once, in one batch.
    train = data.text_classification_source(_minilm.tweets("train", config.train_examples, config.seed), tokenizer,
                                            config.seq_len)
    evaluation = data.text_classification_source(_minilm.tweets(config.eval_split, config.eval_examples, seed=0),
                                                 tokenizer, config.seq_len)
    tx = _launch.config_optimizer(config, learning_rate=config.finetuned_learning_rate, inject_learning_rate=True)
    return Build(params=finetuned, tx=tx, seed=config.seed, batch_size=config.batch_size,
                 eval_batch_size=config.eval_batch_size, num_steps=config.num_steps,
                 loss=losses.classification_loss(apply_fn, inputs=INPUTS),
                 metrics=losses.classification_metrics(apply_fn, inputs=INPUTS), train=train, eval=evaluation,
                 extra={"scratch_params": scratch})


def _eval_curve(history: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_accuracy"]) for r in history if "eval_accuracy" in r]


def _plot(curves: dict, losses_by_arm: dict, target: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for arm, curve in curves.items():
        left.plot(*zip(*curve), marker=".", label=arm)
        right.plot(*zip(*losses_by_arm[arm]), label=arm)
    left.axhline(target, color="gray", ls="--", lw=1, label="scratch final")
    left.set(title="eval accuracy", xlabel="step")
    right.set(title="train loss", xlabel="step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("MiniLM fine-tuned vs from scratch (tweet sentiment)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fast_start(config, parts, results, train):
    """The regime arm: fine-tuning with the schedule that starts fastest (a larger peak rate, a short
    warmup) against scratch at the best of `scratch_learning_rates` (its own best rate, not ours).

    Returns `(headline entries, metrics)`; `results` holds the main arms (a scratch rate equal to
    `scratch_learning_rate` reuses that run)."""
    fs = config.fast_start
    runs = {"finetuned": train("fast_start/finetuned", parts.params, fs.learning_rate, fs.warmup_steps)}
    for lr in fs.scratch_learning_rates:
        runs[f"scratch@{lr:g}"] = (results["scratch"] if lr == config.scratch_learning_rate else
                                   train(f"fast_start/scratch@{lr:g}", parts.extra["scratch_params"], lr))
    if any(r.preempted for r in runs.values()):
        return {}, {"preempted": True}
    final = {arm: r.last_eval["accuracy"] for arm, r in runs.items()}
    best = max((a for a in runs if a.startswith("scratch")), key=final.get)
    match = steps_to_target(_eval_curve(runs["finetuned"].history), final[best])
    speedup = config.num_steps / match if match else None
    headline = {"fast_start.finetuned_accuracy": final["finetuned"], "fast_start.scratch_accuracy": final[best],
                "fast_start.scratch_learning_rate": float(best.split("@")[1]),
                "fast_start.steps_to_match_scratch": match, "fast_start.speedup": speedup}
    metrics = {"final_accuracy": final, "eval_curves": {a: _eval_curve(r.history) for a, r in runs.items()},
               "learning_rate": fs.learning_rate, "warmup_steps": fs.warmup_steps}
    return headline, metrics


def run(config, workdir):
    parts = build(config)
    eval_step = make_eval_step(parts.metrics)
    starts = {"finetuned": parts.params, "scratch": parts.extra["scratch_params"]}
    learning_rates = {"finetuned": config.finetuned_learning_rate, "scratch": config.scratch_learning_rate}

    def eval_fn(params):
        return evaluate(eval_step, params, data.eval_batches(parts.eval, config.eval_batch_size))

    def train(arm, start, learning_rate, warmup_steps=None):
        # A copy: the step donates its state, and the arms share the head's init arrays.
        # The peak rate is injected (held in the optimizer state), so the arms share one compiled train step.
        tx = _launch.config_optimizer(config, learning_rate=learning_rate, warmup_steps=warmup_steps,
                                      inject_learning_rate=True)
        state = TrainState.create(jax.tree.map(jnp.copy, start), tx, jax.random.key(config.seed))
        # A fresh iterator with the same seed: every arm sees the same batches in the same order.
        batches = data.batches(parts.train, batch_size=config.batch_size, seed=config.seed)
        arm_dir = os.path.join(workdir, arm)
        result = fit(state, make_train_step(parts.loss, tx), batches, num_steps=config.num_steps,
                     workdir=arm_dir, eval_fn=eval_fn, eval_every=config.eval_every,
                     checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                     progress=config.progress, desc=f"finetune/{arm}")
        if not result.preempted:
            plot_curves(arm_dir, title=f"finetune: {arm}")
        return result

    results = {}
    for arm in ARMS:
        results[arm] = train(arm, starts[arm], learning_rates[arm])
        if results[arm].preempted:
            return {"preempted": True}, {}
    fast, fast_metrics = fast_start(config, parts, results, train) if config.fast_start.enabled else ({}, {})
    if fast_metrics.get("preempted"):
        return {"preempted": True}, {}

    curves = {arm: _eval_curve(r.history) for arm, r in results.items()}
    final = {arm: r.last_eval["accuracy"] for arm, r in results.items()}
    match = steps_to_target(curves["finetuned"], final["scratch"])
    speedup = config.num_steps / match if match else None
    headline = {"finetuned_accuracy": final["finetuned"], "scratch_accuracy": final["scratch"],
                "steps_to_match_scratch": match, "speedup": speedup,
                "compute_saved": 1 - 1 / speedup if speedup else None, **fast}
    train_losses = {arm: [(row["step"], row["loss"]) for row in r.history if "loss" in row]
                    for arm, r in results.items()}
    _plot(curves, train_losses, final["scratch"], os.path.join(workdir, "learning_curves.png"))
    metrics = {
        "eval_curves": {arm: [[s, a] for s, a in c] for arm, c in curves.items()},
        "final_eval": {arm: r.last_eval for arm, r in results.items()},
        "accuracy_gain": final["finetuned"] - final["scratch"],
        "resolution_steps": config.eval_every,
        # When did scratch itself first reach its final accuracy? (a plateau would shrink the speedup)
        "scratch_steps_to_own_final": steps_to_target(curves["scratch"], final["scratch"]),
        "steps_per_s": {arm: r.steps_per_s for arm, r in results.items()},
        "compile_s": {arm: r.compile_s for arm, r in results.items()},
        "params": count_params(parts.params),
        "train_examples": len(parts.train), "eval_examples": len(parts.eval),
        "fast_start": fast_metrics,
    }
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("finetune", run))

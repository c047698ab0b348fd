"""Experiment `baseline`: the brute-force reference, trained from scratch.

The MNIST-5k CNN (default) or the Shakespeare causal LM (`--config.task=lm`), trained with the canonical
loop: full precision, every weight trainable, synchronous evaluation. Later experiments compare against
it. Headline: `eval_accuracy` (CNN) or `eval_loss` (LM), `steps_per_s`, `compile_s`, `params`.
"""

from __future__ import annotations

import itertools

import jax

from leanjax import data
from leanjax.experiments import _launch
from leanjax.experiments._baseline import build
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit, plot_curves
from leanjax.trees import count_params


def run(config, workdir):
    parts = build(config)
    tx = _launch.config_optimizer(config)
    state = TrainState.create(parts["params"], tx, jax.random.key(config.seed))
    train_step = make_train_step(parts["loss"], tx, grad_accum_steps=config.grad_accum_steps)
    eval_step = make_eval_step(parts["metrics"])

    def eval_fn(params):
        batches = data.eval_batches(parts["eval"], config.eval_batch_size)
        return evaluate(eval_step, params, itertools.islice(batches, config.eval_max_batches or None))

    result = fit(state, train_step, data.batches(parts["train"], batch_size=config.batch_size, seed=config.seed),
                 num_steps=config.num_steps, workdir=workdir, eval_fn=eval_fn, eval_every=config.eval_every,
                 checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
                 log_every=config.log_every, progress=config.progress, desc=f"baseline/{config.task}")
    if result.preempted:
        return {"preempted": True}, {}
    plot_curves(workdir, title=f"baseline ({config.task})")
    final = result.last_eval
    headline = {"steps_per_s": result.steps_per_s, "compile_s": result.compile_s,
                "params": count_params(parts["params"])}
    if config.task == "cnn":
        headline = {"eval_accuracy": final["accuracy"], **headline}
    else:
        headline = {"eval_loss": final["loss"], **headline}
    metrics = {"final_eval": final, "resumed_from_step": result.start_step,
               "final_train_loss": next((r["loss"] for r in reversed(result.history) if "loss" in r), None)}
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("baseline", run))

"""Experiment `baseline`: the brute-force reference, trained from scratch.

The MNIST-5k CNN (default) or the Shakespeare causal LM (`--config.task=lm`), trained with the canonical
loop: full precision, every weight trainable, synchronous evaluation. Later experiments compare against
it. Headline: `eval_accuracy` (CNN) or `eval_loss` (LM), `steps_per_s`, `compile_s`, `params`.
"""

from __future__ import annotations

import itertools

import jax
from flax import nnx

from leanjax import data, losses
from leanjax.experiments import _launch
from leanjax.models import CNN, CausalLM, TransformerConfig, functional
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit, plot_curves
from leanjax.trees import count_params


def build(config):
    """Model, loss, metrics and data sources for `config.task`."""
    rngs = nnx.Rngs(config.seed)
    if config.task == "cnn":
        model = CNN(10, features=tuple(config.cnn.features), dense=config.cnn.dense,
                    dropout=config.cnn.dropout, image_size=28, rngs=rngs)
        apply_fn, params = functional(model)
        return dict(params=params, loss=losses.classification_loss(apply_fn, inputs="image"),
                    metrics=losses.classification_metrics(apply_fn, inputs="image"),
                    train=data.load("mnist5k", "train"), eval=data.load("mnist5k", "test"))
    if config.task == "lm":
        lm = config.lm
        train_src = data.lm_source("shakespeare", "train", seq_len=lm.seq_len, tokenizer=lm.tokenizer)
        eval_src = data.lm_source("shakespeare", "validation", seq_len=lm.seq_len, tokenizer=lm.tokenizer)
        model = CausalLM(TransformerConfig(
            vocab_size=train_src.vocab_size, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
            num_heads=lm.num_heads, intermediate_size=lm.intermediate_size,
            max_position_embeddings=lm.seq_len, type_vocab_size=0, dropout=lm.dropout, causal=True,
            scan_layers=lm.scan_layers, remat=lm.remat), rngs=rngs)
        apply_fn, params = functional(model)
        return dict(params=params, loss=losses.lm_loss(apply_fn), metrics=losses.lm_metrics(apply_fn),
                    train=train_src, eval=eval_src)
    raise ValueError(f"config.task={config.task!r}: use 'cnn' or 'lm'")


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

"""Shared by the `prune` and `distill` experiments: all-MiniLM-L6-v2 fine-tuned on tweet sentiment once,
cached in the experiment's workdir, plus timing and evaluation helpers for side-by-side arms.

The fine-tuning run is the canonical `fit` in `<workdir>/teacher`; its final checkpoint *is* the cache:
running the experiment again with the same workdir resumes at the last step and trains nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics

import jax
from flax import nnx

from leanjax import data, losses
from leanjax.audit import time_step
from leanjax.models import SequenceClassifier, functional
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit
from leanjax.weights import load_pretrained

INPUTS = ("input_ids", "attention_mask")


class Preempted(Exception):
    """A `fit` stopped on SIGTERM (checkpoint saved): the experiment must stop too, not go on with a
    half-trained model. `run` catches it and returns `{"preempted": True}` (see `_launch.main`)."""


def finished(result):
    """`result` (a `FitResult`), or `Preempted` raised if that run was stopped by SIGTERM."""
    if result.preempted:
        raise Preempted
    return result


def _split(name: str, examples: int) -> str:
    return f"{name}[:{examples}]" if examples else name


def tweets(tokenizer, seq_len: int, train_examples: int, eval_examples: int):
    """Tokenized tweet train / test sources (the first N examples of each split; 0: all)."""
    train = data.text_classification_source(data.load("tweets", _split("train", train_examples)), tokenizer, seq_len)
    test = data.text_classification_source(data.load("tweets", _split("test", eval_examples)), tokenizer, seq_len)
    return train, test


def classifier(num_layers: int, *, dropout: float, seed: int):
    """`(pretrained, model_config, apply_fn, fresh, loaded)`: a 3-way classifier of MiniLM's first
    `num_layers` layers; `fresh` is its random init, `loaded` the same with MiniLM's encoder weights (the
    same head, so the encoder's start is the only difference between the two)."""
    pretrained = load_pretrained("minilm", model_cls=SequenceClassifier, model_kwargs={"num_labels": 3},
                                 config_overrides={"dropout": dropout}, seed=seed)
    if not 1 <= num_layers <= pretrained.config.num_layers:
        raise ValueError(f"config.num_layers={num_layers}: MiniLM has {pretrained.config.num_layers}")
    config = dataclasses.replace(pretrained.config, num_layers=num_layers)
    apply_fn, fresh = functional(SequenceClassifier(config, 3, rngs=nnx.Rngs(seed)))
    _, weights = functional(pretrained.model)
    encoder = {**weights["encoder"], "layers": {i: weights["encoder"]["layers"][i] for i in range(num_layers)}}
    return pretrained, config, apply_fn, fresh, {"encoder": encoder, "classifier": fresh["classifier"]}


def minilm(c):
    """`(model_config, apply_fn, params, tokenizer, train, test)`: MiniLM's first `c.num_layers` layers
    with a fresh 3-way head (not yet fine-tuned), and `c.train_examples` / `c.eval_examples` tweets."""
    pretrained, config, apply_fn, _, params = classifier(c.num_layers, dropout=0.1, seed=c.seed)
    train, test = tweets(pretrained.tokenizer, c.seq_len, c.train_examples, c.eval_examples)
    return config, apply_fn, params, pretrained.tokenizer, train, test


def optimizer(c):
    """The fine-tuning optimizer: AdamW at `c.learning_rate` over `c.num_steps` steps."""
    return make_optimizer("adamw", learning_rate=c.learning_rate, total_steps=c.num_steps,
                          warmup_steps=max(c.num_steps // 10, 1), weight_decay=0.01)


def finetuned_minilm(c, workdir: str, *, progress: bool = False):
    """`minilm(c)` fine-tuned for `c.num_steps` steps (`optimizer(c)`), cached in `workdir` (see module
    docstring)."""
    config, apply_fn, params, tokenizer, train, test = minilm(c)
    tx = optimizer(c)
    state = TrainState.create(params, tx, jax.random.key(c.seed))
    step = make_train_step(losses.classification_loss(apply_fn, inputs=INPUTS), tx)
    result = finished(fit(state, step, data.batches(train, batch_size=c.batch_size, seed=c.seed),
                          num_steps=c.num_steps, workdir=workdir, log_every=max(c.num_steps // 5, 1),
                          progress=progress, desc="minilm/finetune"))
    return config, apply_fn, result.state.params, tokenizer, train, test


@functools.lru_cache(maxsize=32)
def _eval_step(apply_fn, inputs):
    return make_eval_step(losses.classification_metrics(apply_fn, inputs=inputs))


def accuracy(apply_fn, params, source, batch_size: int, inputs) -> float:
    """Accuracy of `apply_fn(params, *batch[inputs])` over every example of `source` (one compiled eval step
    per `apply_fn`, shared by every params of the same structure)."""
    return evaluate(_eval_step(apply_fn, tuple(inputs)), params, data.eval_batches(source, batch_size))["accuracy"]


def throughput_ratios(arms: dict, batch: tuple, *, rounds: int = 5, iters: int = 3) -> dict[str, float]:
    """Examples/s of each `(fn, params)` arm relative to the first, timed alternately in `rounds` rounds
    (median of each arm's per-round medians), so load on the shared machine hits every arm alike."""
    names = list(arms)
    times = {n: [] for n in names}
    compiled = {n: jax.jit(fn) for n, (fn, _) in arms.items()}
    for n in names:  # compile outside the timed rounds
        jax.block_until_ready(compiled[n](arms[n][1], *batch))
    for _ in range(rounds):
        for n in names:
            times[n].append(time_step(compiled[n], arms[n][1], *batch, warmup=1, iters=iters).median_s)
    base = statistics.median(times[names[0]])
    return {n: base / statistics.median(times[n]) for n in names}


def ensure_dir(*parts: str) -> str:
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path

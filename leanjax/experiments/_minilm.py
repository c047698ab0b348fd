"""The home of MiniLM for the experiments (finetune, lora, quantize, prune, distill, warm_start, pipeline):
all-MiniLM-L6-v2 as a 3-way tweet-sentiment classifier, the tweet subsets, the LoRA/QLoRA arms and the int8/int4
serving arms, a fine-tune cached in the experiment's workdir, and timing and evaluation helpers for
side-by-side arms. Experiments import these from here, never from each other.

The fine-tuning run is the canonical `fit` in `<workdir>/teacher`; its final checkpoint *is* the cache:
running the experiment again with the same workdir resumes at the last step and trains nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from flax import nnx

from leanjax import data, losses, transforms
from leanjax.audit import time_interleaved
from leanjax.experiments import _launch
from leanjax.models import SequenceClassifier, functional
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit
from leanjax.weights import load_pretrained

INPUTS = ("input_ids", "attention_mask")
ADAPTER_ARMS = ("full", "lora", "qlora")
KERNELS = r".*kernel"
ENCODER_KERNELS = r"encoder/layers/.*kernel"
EMBEDDINGS = r"encoder/embeddings/(word|position)/embedding"


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


def tweets(split: str, examples: int, seed: int) -> list[dict]:
    """A fixed random subset of `examples` tweets of `split` (0: all), read in one batch, drawn by seed
    so that every class is represented whatever the stored order."""
    source = data.load("tweets", split)
    rows = range(len(source))
    if examples and examples < len(source):
        rows = np.sort(np.random.default_rng(seed).permutation(len(source))[:examples]).tolist()
    return source.__getitems__(rows)


def tweet_sources(tokenizer, seq_len: int, train_examples: int, eval_examples: int):
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
        raise _launch.ConfigError(f"config.num_layers={num_layers}: MiniLM has {pretrained.config.num_layers}")
    config = dataclasses.replace(pretrained.config, num_layers=num_layers)
    apply_fn, fresh = functional(SequenceClassifier(config, 3, rngs=nnx.Rngs(seed)))
    _, weights = functional(pretrained.model)
    encoder = {**weights["encoder"], "layers": {i: weights["encoder"]["layers"][i] for i in range(num_layers)}}
    return pretrained, config, apply_fn, fresh, {"encoder": encoder, "classifier": fresh["classifier"]}


def minilm_and_tweets(c):
    """`(model_config, apply_fn, params, tokenizer, train, test)`: MiniLM's first `c.num_layers` layers
    with a fresh 3-way head (not yet fine-tuned), and `c.train_examples` / `c.eval_examples` tweets."""
    pretrained, config, apply_fn, _, params = classifier(c.num_layers, dropout=0.1, seed=c.seed)
    train, test = tweet_sources(pretrained.tokenizer, c.seq_len, c.train_examples, c.eval_examples)
    return config, apply_fn, params, pretrained.tokenizer, train, test


def minilm(config, *, scan_layers: bool):
    """`(model_config, params, tokenizer)`: MiniLM's first `config.num_layers` layers with a fresh 3-way
    head, its layers stacked for one `lax.scan` when `scan_layers`."""
    pretrained = load_pretrained("minilm", model_cls=SequenceClassifier, model_kwargs={"num_labels": 3},
                                 config_overrides={"dropout": config.dropout}, scan_layers=scan_layers,
                                 seed=config.seed)
    n = config.num_layers
    if not 1 <= n <= pretrained.config.num_layers:
        raise _launch.ConfigError(f"config.num_layers={n}: MiniLM has {pretrained.config.num_layers}")
    _, params = functional(pretrained.model)
    layers = params["encoder"]["layers"]
    layers = jax.tree.map(lambda x: x[:n], layers) if scan_layers else {i: layers[i] for i in range(n)}
    params = {**params, "encoder": {**params["encoder"], "layers": layers}}
    return dataclasses.replace(pretrained.config, num_layers=n), params, pretrained.tokenizer


def apply_fn_for(model_config, **options):
    """The pure `apply_fn` of a `SequenceClassifier` with `options` (e.g. remat) set; builds no params."""
    abstract = nnx.eval_shape(lambda: SequenceClassifier(dataclasses.replace(model_config, **options), 3,
                                                         rngs=nnx.Rngs(0)))
    return functional(abstract)[0]


def arm_params(params, arm: str, *, rank: int, alpha: float, group_size: int, seed: int):
    """`(params, trainable mask)` of one of `ADAPTER_ARMS`: `full` trains every weight; `lora` adds rank-r
    adapters (https://arxiv.org/abs/2106.09685) to every encoder kernel; `qlora` the same over an NF4 base
    (https://arxiv.org/abs/2305.14314), embeddings in NF4 too. Adapter arms train the adapters and the head
    only."""
    if arm == "full":
        return params, transforms.trainable(params)
    if arm not in ADAPTER_ARMS:
        raise ValueError(f"unknown arm {arm!r}: use one of {ADAPTER_ARMS}")
    if arm == "qlora":
        params = transforms.quantize(params, ENCODER_KERNELS, bits=4, scheme="nf4", group_size=group_size)
        # The embeddings are half of MiniLM: frozen f32 they would dominate QLoRA's memory.
        params = transforms.quantize(params, EMBEDDINGS, bits=4, scheme="nf4", group_size=group_size, axis=-1)
    params = transforms.lora(params, ENCODER_KERNELS, rank=rank, alpha=alpha, key=jax.random.key(seed))
    mask = transforms.trainable(params, freeze_plain=True)
    mask["classifier"] = jax.tree.map(lambda _: True, mask["classifier"])
    return params, mask


def quantized(params, bits: int, group_size: int | None, *, serve: bool):
    """Kernels and word/position embeddings in `bits`-bit integers (embeddings per row); kernels served as
    W8A8 / W4A8 (`transforms.serve_int8`) when `serve`, else dequantizing the weight in each matmul."""
    params = transforms.quantize(params, KERNELS, bits=bits, group_size=group_size)
    params = transforms.quantize(params, EMBEDDINGS, bits=bits, group_size=group_size, axis=-1)
    return transforms.serve_int8(params, KERNELS) if serve else params


def optimizer(c):
    """The fine-tuning optimizer (`_launch.config_optimizer`): `c.learning_rate` over `c.num_steps` steps,
    a tenth of them warmup, weight decay 0.01 unless `c` sets them."""
    return _launch.config_optimizer(c, warmup_steps=c.get("warmup_steps", max(c.num_steps // 10, 1)),
                                    weight_decay=c.get("weight_decay", 0.01))


def finetuned_minilm(c, workdir: str, *, progress: bool = False):
    """`minilm_and_tweets(c)` fine-tuned for `c.num_steps` steps (`optimizer(c)`), cached in `workdir` (see module
    docstring)."""
    config, apply_fn, params, tokenizer, train, test = minilm_and_tweets(c)
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
    times = time_interleaved({n: (jax.jit(fn), (params, *batch)) for n, (fn, params) in arms.items()},
                             repeats=rounds, iters=iters)
    base = times[next(iter(arms))]
    return {n: base / t for n, t in times.items()}


def ensure_dir(*parts: str) -> str:
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path

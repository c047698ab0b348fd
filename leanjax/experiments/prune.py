"""Experiment `prune`: how much of a trained model can go, and what does removing it really save?

On the MNIST-5k CNN and on MiniLM fine-tuned on tweet sentiment (`leanjax.experiments._minilm`), the
dense model is trained first; every arm then starts from it and fine-tunes for the same `prune_steps`:

- `s50` / `s75` / `s90`: unstructured magnitude pruning ramped by Zhu & Gupta's cubic schedule over the
  first `ramp_fraction` of the steps (`prune_by_schedule`, masks in the optimizer state);
- `nm24`: one-shot 2:4 masks kept fixed while fine-tuning (`keep_masks`), then stored as `Packed24`
  (accuracy measured on the packed model);
- `structured50`: half the units one-shot (CNN: conv channels and dense neurons; MiniLM: the attention
  heads and the FFN neurons of every layer), fine-tuned with the masks, then `compact`ed into a smaller
  model whose accuracy, stored bytes and inference throughput are measured.

Headline per model prefix (`cnn.`, `minilm.`): `dense_accuracy`, `s50.accuracy`, `s75.accuracy`,
`s90.accuracy`, `nm24.accuracy`, `structured50.accuracy`, `structured50.size_ratio` and
`nm24.size_ratio` (stored bytes of all params vs the dense model's), `structured50.throughput_ratio`
(inference examples/s of the compacted vs the dense model, timed alternately in this process).

With `long_steps > 0` (MiniLM's default), the regime arms of issue 19: `long_sparsity` reached over a long
fine-tune by magnitude (`gradual.accuracy`) and by movement pruning (`movement.accuracy`, Sanh et al. 2020,
https://arxiv.org/abs/2005.07683), and the dense model fine-tuned as long (`long_dense.accuracy`).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leanjax import data, losses
from leanjax.experiments import _launch, _minilm
from leanjax.experiments._build import Build
from leanjax.models import CNN, SequenceClassifier, functional
from leanjax.optim import set_hyperparams
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import fit, plot_bars
from leanjax.transforms import apply, weight_bytes
from leanjax.transforms import prune as pruning
from leanjax.transforms.compact import cnn_groups, compact, structured_masks, transformer_groups
from leanjax.transforms.distill import cache_topk, offline_distillation_loss
from leanjax.transforms.sparse24 import pack24

SPARSITIES = {"s50": 0.5, "s75": 0.75, "s90": 0.9}
LONG_ARMS = ("long_dense", "gradual", "gradual_kd", "movement")  # `_long_arms`, in the order they can run
MINILM_KERNELS = r"encoder/layers/\d+/(attention/(query|key|value|output)|intermediate|output)/kernel"


def _cnn(c):
    """The dense CNN (untrained), its half-width twin for the compacted arm, and the data."""
    make = lambda f, d: CNN(10, features=f, dense=d, dropout=c.dropout, image_size=28, rngs=nnx.Rngs(c.seed))  # noqa: E731
    apply_fn, params = functional(make(tuple(c.features), c.dense))
    half = lambda n: n // 2  # noqa: E731
    small_apply, _ = functional(make(tuple(half(f) for f in c.features), half(c.dense)))
    return dict(apply=apply_fn, params=params, train=data.load("mnist5k", "train"), test=data.load("mnist5k", "test"),
                inputs=("image",), unstructured=r".*kernel", nm=r"(hidden|head)/kernel", groups=cnn_groups(params),
                small_apply=small_apply,
                tx=_launch.config_optimizer(c, num_steps=c.dense_steps, warmup_steps=c.dense_steps // 10))


def _trained_cnn(c, workdir):
    """`_cnn(c)` with the dense model trained for `c.dense_steps` steps."""
    m = _cnn(c)
    step = make_train_step(losses.classification_loss(m["apply"], inputs="image"), m["tx"])
    result = _minilm.finished(fit(
        TrainState.create(m["params"], m["tx"], jax.random.key(c.seed)), step,
        data.batches(m["train"], batch_size=c.batch_size, seed=c.seed), num_steps=c.dense_steps,
        workdir=os.path.join(workdir, "dense"), log_every=max(c.dense_steps // 5, 1), progress=False,
        desc="prune/cnn/dense"))
    return {**m, "params": result.state.params}


def _minilm_model(c, workdir=None):
    """MiniLM fine-tuned on tweets (cached in `workdir`; None: not fine-tuned) and its half-width twin."""
    if workdir is None:
        config, apply_fn, params, _, train, test = _minilm.minilm_and_tweets(c)
    else:
        config, apply_fn, params, _, train, test = _minilm.finetuned_minilm(c, os.path.join(workdir, "teacher"))
    # Half the heads (same head size: Attention reshapes its context to (b, t, -1)) and half the FFN neurons.
    small = dataclasses.replace(config, num_heads=config.num_heads // 2,
                                intermediate_size=config.intermediate_size // 2)
    small_apply, _ = functional(SequenceClassifier(small, 3, rngs=nnx.Rngs(0)))
    return dict(apply=apply_fn, params=params, train=train, test=test, inputs=_minilm.INPUTS,
                unstructured=MINILM_KERNELS, nm=MINILM_KERNELS,
                groups=transformer_groups(params, config.num_heads, heads=True), small_apply=small_apply,
                tx=_minilm.optimizer(c))


def build(config):
    """What `--audit` compiles: the dense `config.models[0]` (untrained), its train and serving steps, and
    the serving steps of its 2:4-packed and compacted (structured 50%) forms."""
    name = config.models[0]
    c = config[name]
    m = _cnn(c) if name == "cnn" else _minilm_model(c)
    metrics = lambda fn: losses.classification_metrics(fn, inputs=m["inputs"])  # noqa: E731
    dense = m["params"]
    nm, (masks, keep) = pruning.nm_masks(dense, m["nm"]), structured_masks(dense, m["groups"], 0.5)
    return Build(params=dense, loss=losses.classification_loss(m["apply"], inputs=m["inputs"]),
                 metrics=metrics(m["apply"]), train=m["train"], eval=m["test"], tx=m["tx"], seed=c.seed,
                 batch_size=c.batch_size, eval_batch_size=c.eval_batch_size,
                 num_steps=c.dense_steps if name == "cnn" else c.num_steps,
                 serve_arms={"nm24": (metrics(m["apply"]), pack24(pruning.apply_masks(dense, nm), m["nm"], nm)),
                             "structured50": (metrics(m["small_apply"]),
                                              compact(pruning.apply_masks(dense, masks), m["groups"], keep))})


def _finetune(m, c, tx, params, workdir, desc, step=None, num_steps=None, loss=None, train=None, **hyperparams):
    """`num_steps` (default `prune_steps`) of fine-tuning from `params` with `tx` (a pruning wrapper); the final
    state. `step`: a compiled train step shared by arms whose optimizers differ only in their state (masks, or
    the injected `hyperparams` set here). `loss`, `train`: instead of the labels' loss and `m["train"]`."""
    num_steps = num_steps or c.prune_steps
    step = step or make_train_step(loss or losses.classification_loss(m["apply"], inputs=m["inputs"]), tx)
    state = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(c.seed))
    state = set_hyperparams(state, **hyperparams)  # injected: values in the state, not in the compiled step
    result = fit(state, step, data.batches(train or m["train"], batch_size=c.batch_size, seed=c.seed + 1),
                 num_steps=num_steps, workdir=workdir, log_every=max(num_steps // 5, 1), progress=False,
                 desc=desc)
    return _minilm.finished(result).state


def _model(name, m, c, workdir):
    optimizer = lambda: _launch.config_optimizer(c, learning_rate=c.prune_learning_rate,  # noqa: E731
                                                 num_steps=c.prune_steps, warmup_steps=0, weight_decay=0.0)
    acc = lambda apply_fn, params: _minilm.accuracy(apply_fn, params, m["test"], c.eval_batch_size, m["inputs"])  # noqa: E731
    dense = m["params"]
    out = {"dense_accuracy": acc(m["apply"], dense)}
    sparsity = {}
    ramp = max(int(c.prune_steps * c.ramp_fraction), 1)
    # The final sparsity is injected: every target sparsity trains with one compiled step.
    tx = pruning.gradual_pruning(optimizer, pruning.magnitude(m["unstructured"]), ramp, update_every=c.update_every)
    step = make_train_step(losses.classification_loss(m["apply"], inputs=m["inputs"]), tx)
    for arm, s in SPARSITIES.items():
        state = _finetune(m, c, tx, dense, os.path.join(workdir, arm), f"prune/{name}/{arm}", step, sparsity=s)
        out[f"{arm}.accuracy"] = acc(m["apply"], state.params)
        sparsity[arm] = pruning.report(state.params, pruning.masks_of(state.opt_state))

    # The fixed masks of both one-shot arms, completed to the same leaves (all-True where only the other
    # prunes): `keep_masks` reads its masks from the optimizer state, so both train with one compiled step.
    masks, (structured, keep) = pruning.nm_masks(dense, m["nm"]), structured_masks(dense, m["groups"], 0.5)
    fixed = {"nm24": pruning.complete_masks(masks, structured),
             "structured50": pruning.complete_masks(structured, masks)}
    step = make_train_step(losses.classification_loss(m["apply"], inputs=m["inputs"]),
                           pruning.keep_masks(optimizer(), fixed["nm24"]))
    state = _finetune(m, c, pruning.keep_masks(optimizer(), fixed["nm24"]), pruning.apply_masks(dense, masks),
                      os.path.join(workdir, "nm24"), f"prune/{name}/nm24", step)
    packed = pack24(state.params, m["nm"], masks)
    out["nm24.accuracy"] = acc(apply(m["apply"]), packed)
    out["nm24.size_ratio"] = weight_bytes(packed) / weight_bytes(dense)
    sparsity["nm24"] = pruning.report(state.params, masks)

    state = _finetune(m, c, pruning.keep_masks(optimizer(), fixed["structured50"]),
                      pruning.apply_masks(dense, structured),
                      os.path.join(workdir, "structured50"), f"prune/{name}/structured50", step)
    small = compact(state.params, m["groups"], keep)
    out["structured50.accuracy"] = acc(m["small_apply"], small)
    out["structured50.size_ratio"] = weight_bytes(small) / weight_bytes(dense)
    batch = next(iter(data.eval_batches(m["test"], c.throughput_batch)))
    x = tuple(jnp.asarray(batch[k]) for k in m["inputs"])
    ratios = _minilm.throughput_ratios({"dense": (m["apply"], dense), "structured50": (m["small_apply"], small)},
                                       x, rounds=c.timing_rounds)
    out["structured50.throughput_ratio"] = ratios["structured50"]
    if c.long_steps:
        out.update(_long_arms(name, m, c, workdir, acc, sparsity))
    return out, sparsity


def _long_arms(name, m, c, workdir, acc, sparsity):
    """The regime arms (issue 19): `long_sparsity` reached over `long_steps` of fine-tuning (cubic ramp over
    `long_ramp_fraction` of them) by magnitude (`gradual`, Zhu & Gupta), by magnitude while distilling from
    the dense control (`gradual_kd`: its cached logits, offline KD; listed after `long_dense`) and by movement
    (`movement`, Sanh et al.), beside the dense model fine-tuned as long (`long_dense`, the control)."""
    if unknown := sorted(set(c.long_arms) - set(LONG_ARMS)):
        raise _launch.ConfigError(f"long_arms: unknown {unknown}; use some of {list(LONG_ARMS)}")
    optimizer = lambda: _launch.config_optimizer(c, learning_rate=c.long_learning_rate,  # noqa: E731
                                                 num_steps=c.long_steps, warmup_steps=0, weight_decay=0.0)
    ramp = max(int(c.long_steps * c.long_ramp_fraction), 1)
    gradual = lambda scores, **kw: pruning.gradual_pruning(  # noqa: E731
        optimizer, scores(m["unstructured"]), ramp, update_every=c.update_every, **kw)
    target = {"sparsity": c.long_sparsity}
    teacher = m["params"]  # the KD arm's teacher: the dense control once it has run, else the start
    out = {}
    for arm in c.long_arms:
        if arm == "long_dense":
            tx, kw = optimizer(), {}
        elif arm == "movement":
            tx, kw = gradual(pruning.top_scores, movement=True), target
        elif arm == "gradual":
            tx, kw = gradual(pruning.magnitude), target
        else:  # gradual_kd (LONG_ARMS is checked above)
            tx, kw = gradual(pruning.magnitude), {**target, **_dense_teacher(m, c, teacher)}
        state = _finetune(m, c, tx, m["params"], os.path.join(workdir, arm), f"prune/{name}/{arm}",
                          num_steps=c.long_steps, **kw)
        out[f"{arm}.accuracy"] = acc(m["apply"], state.params)
        if arm == "long_dense":
            teacher = state.params
        else:
            sparsity[arm] = pruning.report(state.params, pruning.masks_of(state.opt_state))
    return out


def _dense_teacher(m, c, params) -> dict:
    """`_finetune`'s `loss` and `train` for distilling from the dense model `params` while pruning: its logits
    cached once over the training set (`cache_topk`, every class), KD at `long_kd_temperature` weighted
    `long_kd_alpha`."""
    logits = jax.jit(lambda p, b: m["apply"](p, *(b[k] for k in m["inputs"])))
    train = m["train"]  # a text_classification_source: an ArraySource
    classes = int(np.max(train.arrays["label"])) + 1
    cache = cache_topk(lambda b: logits(params, b), data.eval_batches(train, c.eval_batch_size), len(train),
                       k=classes)
    train = data.ArraySource({**train.arrays, **cache})
    loss = offline_distillation_loss(m["apply"], inputs=m["inputs"], alpha=c.long_kd_alpha,
                                     temperature=c.long_kd_temperature)
    return {"loss": loss, "train": train}


def run(config, workdir):
    headline, metrics = {}, {"sparsity": {}}
    builders = {"cnn": _trained_cnn, "minilm": _minilm_model}
    for name in config.models:
        sub = config[name]
        model_dir = os.path.join(workdir, name)
        try:
            out, sparsity = _model(name, builders[name](sub, model_dir), sub, model_dir)
        except _minilm.Preempted:  # SIGTERM: checkpoints saved; a rerun resumes
            return {"preempted": True}, {}
        headline.update({f"{name}.{k}": v for k, v in out.items()})
        metrics["sparsity"][name] = sparsity
    keys = {"dense": "dense_accuracy", **{a: f"{a}.accuracy" for a in (*SPARSITIES, "nm24", "structured50",
                                                                        "long_dense", "gradual", "movement")}}
    bars = {m: {a: headline[f"{m}.{k}"] for a, k in keys.items() if f"{m}.{k}" in headline} for m in config.models}
    plot_bars(bars, os.path.join(workdir, "accuracy.png"), ylabel="test accuracy", ylim=(0, 1),
              title="pruning: accuracy per arm")
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("prune", run))

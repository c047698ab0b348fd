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
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from flax import nnx

from leanjax import data, losses
from leanjax.experiments import _launch, _minilm
from leanjax.models import CNN, SequenceClassifier, functional
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import fit
from leanjax.transforms import apply, weight_bytes
from leanjax.transforms.compact import cnn_groups, compact, structured_masks, transformer_groups
from leanjax.transforms.prune import (apply_masks, keep_masks, magnitude, masks_of, nm_masks,
                                      polynomial_schedule, prune_by_schedule, report)
from leanjax.transforms.sparse24 import pack24

SPARSITIES = {"s50": 0.5, "s75": 0.75, "s90": 0.9}
MINILM_KERNELS = r"encoder/layers/\d+/(attention/(query|key|value|output)|intermediate|output)/kernel"


def _cnn(c, workdir):
    """The dense CNN, trained; its model pieces and data."""
    make = lambda f, d: CNN(10, features=f, dense=d, dropout=c.dropout, image_size=28, rngs=nnx.Rngs(c.seed))  # noqa: E731
    apply_fn, params = functional(make(tuple(c.features), c.dense))
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    tx = make_optimizer("adamw", learning_rate=c.learning_rate, total_steps=c.dense_steps,
                        warmup_steps=c.dense_steps // 10, weight_decay=1e-4)
    step = make_train_step(losses.classification_loss(apply_fn, inputs="image"), tx)
    result = _minilm.finished(fit(
        TrainState.create(params, tx, jax.random.key(c.seed)), step,
        data.batches(train, batch_size=c.batch_size, seed=c.seed), num_steps=c.dense_steps,
        workdir=os.path.join(workdir, "dense"), log_every=max(c.dense_steps // 5, 1), progress=False,
        desc="prune/cnn/dense"))
    half = lambda n: n // 2  # noqa: E731
    small_apply, _ = functional(make(tuple(half(f) for f in c.features), half(c.dense)))
    return dict(apply=apply_fn, params=result.state.params, train=train, test=test, inputs=("image",),
                unstructured=r".*kernel", nm=r"(hidden|head)/kernel", groups=cnn_groups(result.state.params),
                small_apply=small_apply)


def _minilm_model(c, workdir):
    config, apply_fn, params, _, train, test = _minilm.finetuned_minilm(c, os.path.join(workdir, "teacher"))
    # Half the heads (same head size: Attention reshapes its context to (b, t, -1)) and half the FFN neurons.
    small = dataclasses.replace(config, num_heads=config.num_heads // 2,
                                intermediate_size=config.intermediate_size // 2)
    small_apply, _ = functional(SequenceClassifier(small, 3, rngs=nnx.Rngs(0)))
    return dict(apply=apply_fn, params=params, train=train, test=test, inputs=_minilm.INPUTS,
                unstructured=MINILM_KERNELS, nm=MINILM_KERNELS,
                groups=transformer_groups(params, config.num_heads, heads=True), small_apply=small_apply)


def _finetune(m, c, tx, params, workdir, desc):
    """`prune_steps` of fine-tuning from `params` with `tx` (a pruning wrapper); the final state."""
    step = make_train_step(losses.classification_loss(m["apply"], inputs=m["inputs"]), tx)
    state = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(c.seed))
    result = fit(state, step, data.batches(m["train"], batch_size=c.batch_size, seed=c.seed + 1),
                 num_steps=c.prune_steps, workdir=workdir, log_every=max(c.prune_steps // 5, 1), progress=False,
                 desc=desc)
    return _minilm.finished(result).state


def _model(name, m, c, workdir):
    optimizer = lambda: make_optimizer("adamw", learning_rate=c.prune_learning_rate,  # noqa: E731
                                       total_steps=c.prune_steps, warmup_steps=0, weight_decay=0.0)
    acc = lambda apply_fn, params: _minilm.accuracy(apply_fn, params, m["test"], c.eval_batch_size, m["inputs"])  # noqa: E731
    dense = m["params"]
    out = {"dense_accuracy": acc(m["apply"], dense)}
    sparsity = {}
    ramp = max(int(c.prune_steps * c.ramp_fraction), 1)
    for arm, s in SPARSITIES.items():
        tx = prune_by_schedule(optimizer(), polynomial_schedule(s, 0, ramp), magnitude(m["unstructured"]),
                               update_every=c.update_every, end_step=ramp)
        state = _finetune(m, c, tx, dense, os.path.join(workdir, arm), f"prune/{name}/{arm}")
        out[f"{arm}.accuracy"] = acc(m["apply"], state.params)
        sparsity[arm] = report(state.params, masks_of(state.opt_state))

    masks = nm_masks(dense, m["nm"])
    state = _finetune(m, c, keep_masks(optimizer(), masks), apply_masks(dense, masks),
                      os.path.join(workdir, "nm24"), f"prune/{name}/nm24")
    packed = pack24(state.params, m["nm"], masks)
    out["nm24.accuracy"] = acc(apply(m["apply"]), packed)
    out["nm24.size_ratio"] = weight_bytes(packed) / weight_bytes(dense)
    sparsity["nm24"] = report(state.params, masks)

    masks, keep = structured_masks(dense, m["groups"], 0.5)
    state = _finetune(m, c, keep_masks(optimizer(), masks), apply_masks(dense, masks),
                      os.path.join(workdir, "structured50"), f"prune/{name}/structured50")
    small = compact(state.params, m["groups"], keep)
    out["structured50.accuracy"] = acc(m["small_apply"], small)
    out["structured50.size_ratio"] = weight_bytes(small) / weight_bytes(dense)
    batch = next(iter(data.eval_batches(m["test"], c.throughput_batch)))
    x = tuple(jnp.asarray(batch[k]) for k in m["inputs"])
    ratios = _minilm.throughput_ratios({"dense": (m["apply"], dense), "structured50": (m["small_apply"], small)},
                                       x, rounds=c.timing_rounds)
    out["structured50.throughput_ratio"] = ratios["structured50"]
    return out, sparsity


def _plot(headline, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ["dense", "s50", "s75", "s90", "nm24", "structured50"]
    models = sorted({k.split(".")[0] for k in headline})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        vals = [headline[f"{model}.dense_accuracy" if a == "dense" else f"{model}.{a}.accuracy"] for a in arms]
        ax.bar([i + j * width for i in range(len(arms))], vals, width, label=model)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(arms))], arms)
    ax.set(ylabel="test accuracy", ylim=(0, 1), title="pruning: accuracy per arm")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(config, workdir):
    headline, metrics = {}, {"sparsity": {}}
    builders = {"cnn": _cnn, "minilm": _minilm_model}
    for name in config.models:
        sub = config[name]
        model_dir = os.path.join(workdir, name)
        try:
            out, sparsity = _model(name, builders[name](sub, model_dir), sub, model_dir)
        except _minilm.Preempted:  # SIGTERM: checkpoints saved; a rerun resumes
            return {"preempted": True}, {}
        headline.update({f"{name}.{k}": v for k, v in out.items()})
        metrics["sparsity"][name] = sparsity
    _plot(headline, os.path.join(workdir, "accuracy.png"))
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("prune", run))

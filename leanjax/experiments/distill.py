"""Experiment `distill`: a small student trained from a fine-tuned MiniLM teacher vs from labels alone.

Teacher: MiniLM fine-tuned on tweet sentiment (`leanjax.experiments._minilm`, cached in the workdir).
Student: the teacher's first `student_layers` layers, with the vocabulary cut to the `student_vocab`
most frequent token ids of the training tweets (other ids map to [UNK]): the word-embedding table is
most of MiniLM's 22.7M params, so this is what brings the student under a third of the teacher's size.
Every student arm starts from the same init and trains for the same steps on the same batches:

- `student`: `distillation_loss` (KD at `temperature`, mixed with the label loss by `alpha`), the f32
  teacher running inside the same jitted step as a frozen params argument;
- `label_only`: cross-entropy on the labels alone (the control);
- `int8_teacher`: the same KD with the teacher quantized to int8 (`quantize`, run under `apply`);
- `offline`: KD against the teacher's top-`topk` logits cached once per example id (`cache_topk`),
  no teacher in memory while the student trains.

Regime arm `few_labels` (issue 19): the student sees only the first `few_labels.labels` training tweets
labelled; the rest of the training tweets are an unlabelled pool that only the teacher labels (its cached
top-k logits, and its top class as the label; `teacher_labelled_pool`). KD students at each
`(temperature, alpha)` of `few_labels.sweep` train on the whole pool, the label-only control on the
labelled tweets alone; same init, steps and batch size. Headline: `few_labels.label_only_accuracy`,
`few_labels.student_accuracy` (the best sweep point; all points in metrics), `few_labels.gain` (points),
`few_labels.retention` (vs the teacher).

Headline: `teacher_accuracy`, `student_accuracy`, `label_only_accuracy`, `retention` (student /
teacher), `student_params_ratio`, `student_throughput_ratio` (inference examples/s vs the teacher,
timed alternately), `int8_teacher.student_accuracy`, `offline.student_accuracy`.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leanjax import data, losses
from leanjax.data import ArraySource
from leanjax.experiments import _launch, _minilm
from leanjax.experiments._build import Build
from leanjax.models import SequenceClassifier, functional
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import fit, plot_bars
from leanjax.transforms import apply, quantize
from leanjax.transforms.distill import (
    cache_topk,
    distill_trainable,
    distillation_loss,
    offline_distillation_loss,
    teacher_labelled_pool,
)
from leanjax.trees import count_params

INPUTS = _minilm.INPUTS


def _student(config, teacher, tokenizer, train, c):
    """`(student_apply, student_params)`: the first layers and a frequency-cut vocabulary."""
    ids = train.arrays["input_ids"]
    counts = np.bincount(ids.ravel(), minlength=config.vocab_size)
    special = [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")]
    counts[special] = counts.max() + 1  # always kept
    kept = np.sort(np.argsort(-counts, kind="stable")[:c.student_vocab])
    remap = np.full(config.vocab_size, np.searchsorted(kept, tokenizer.token_to_id("[UNK]")), np.int32)
    remap[kept] = np.arange(len(kept), dtype=np.int32)
    small = dataclasses.replace(config, num_layers=c.student_layers, vocab_size=len(kept))
    base_apply, _ = functional(SequenceClassifier(small, 3, rngs=nnx.Rngs(c.seed)))
    encoder = dict(teacher["encoder"])
    encoder["layers"] = {i: encoder["layers"][i] for i in range(c.student_layers)}
    embeddings = dict(encoder["embeddings"])
    embeddings["word"] = {"embedding": teacher["encoder"]["embeddings"]["word"]["embedding"][kept]}
    encoder["embeddings"] = embeddings
    params = {"encoder": encoder, "classifier": teacher["classifier"]}
    table = jnp.asarray(remap)

    def student_apply(p, input_ids, attention_mask=None, **kw):
        return base_apply(p, jnp.take(table, input_ids), attention_mask, **kw)

    return student_apply, params


def _optimizer(c):
    return _launch.config_optimizer(c, learning_rate=c.student_learning_rate, num_steps=c.student_steps,
                                    warmup_steps=max(c.student_steps // 10, 1), weight_decay=0.01)


def build(config):
    """What `--audit` compiles: the KD train step (student trained, teacher frozen, both in one program; the
    teacher not fine-tuned), the student's serving step and the teacher's beside it."""
    c = config
    model_config, teacher_apply, teacher, tokenizer, train, test = _minilm.minilm_and_tweets(c.teacher)
    student_apply, student = _student(model_config, teacher, tokenizer, train, c)
    both = {"student": student, "teacher": teacher}
    metrics = lambda fn: losses.classification_metrics(fn, inputs=INPUTS)  # noqa: E731
    return Build(params=both, trainable=distill_trainable(both), tx=_optimizer(c),
                 loss=distillation_loss(student_apply, teacher_apply, inputs=INPUTS, alpha=c.alpha,
                                        temperature=c.temperature),
                 metrics=metrics(student_apply), serve_params=student,
                 serve_arms={"teacher": (metrics(teacher_apply), teacher)}, train=train, eval=test,
                 num_steps=c.student_steps, seed=c.seed, batch_size=c.batch_size,
                 eval_batch_size=c.get("eval_batch_size"))


def _train(loss, params, train, c, workdir, desc, trainable=None):
    tx = _optimizer(c)
    state = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(c.seed), trainable=trainable)
    step = make_train_step(loss, tx, trainable=trainable)
    result = fit(state, step, data.batches(train, batch_size=c.batch_size, seed=c.seed + 1),
                 num_steps=c.student_steps, workdir=workdir, log_every=max(c.student_steps // 5, 1),
                 progress=False, desc=desc)
    return _minilm.finished(result).state.params


def few_labels(c, student_apply, student, train, cache, acc, teacher_accuracy, workdir) -> dict:
    """The few-label regime: label-only on `few_labels.labels` tweets vs KD on the teacher-labelled pool."""
    f = c.few_labels
    labelled = ArraySource({k: v[:f.labels] for k, v in train.arrays.items()})
    pool = ArraySource(teacher_labelled_pool(train.arrays, cache, f.labels))
    label_only = acc(student_apply, _train(losses.classification_loss(student_apply, inputs=INPUTS), student,
                                           labelled, c, os.path.join(workdir, "few_labels", "label_only"),
                                           "distill/few_labels/label_only"))
    sweep = {}
    for temperature, alpha in f.sweep:
        name = f"T{temperature:g}_a{alpha:g}"
        loss = offline_distillation_loss(student_apply, inputs=INPUTS, alpha=alpha, temperature=temperature)
        sweep[name] = acc(student_apply, _train(loss, student, pool, c, os.path.join(workdir, "few_labels", name),
                                                f"distill/few_labels/{name}"))
    best = max(sweep, key=sweep.get)
    return {"label_only_accuracy": label_only, "student_accuracy": sweep[best],
            "gain": 100 * (sweep[best] - label_only), "retention": sweep[best] / teacher_accuracy,
            "sweep": {"best": best, "accuracy": sweep, "labels": f.labels, "pool": len(pool)}}


def run(config, workdir):
    try:
        return _run(config, workdir)
    except _minilm.Preempted:  # SIGTERM: checkpoints saved; a rerun resumes
        return {"preempted": True}, {}


def _run(config, workdir):
    c = config
    model_config, teacher_apply, teacher, tokenizer, train, test = _minilm.finetuned_minilm(
        c.teacher, os.path.join(workdir, "teacher"))
    student_apply, student = _student(model_config, teacher, tokenizer, train, c)
    acc = lambda fn, p: _minilm.accuracy(fn, p, test, c.eval_batch_size, INPUTS)  # noqa: E731

    kd = distillation_loss(student_apply, teacher_apply, inputs=INPUTS, alpha=c.alpha, temperature=c.temperature)
    both = {"student": student, "teacher": teacher}
    trained = {"student": _train(kd, both, train, c, os.path.join(workdir, "student"), "distill/student",
                                 distill_trainable(both))["student"]}
    trained["label_only"] = _train(losses.classification_loss(student_apply, inputs=INPUTS), student, train, c,
                                   os.path.join(workdir, "label_only"), "distill/label_only")
    int8 = {"student": student, "teacher": quantize(teacher, r"encoder/layers/.*kernel", bits=8)}
    kd8 = distillation_loss(student_apply, apply(teacher_apply), inputs=INPUTS, alpha=c.alpha,
                            temperature=c.temperature)
    trained["int8_teacher"] = _train(kd8, int8, train, c, os.path.join(workdir, "int8_teacher"),
                                     "distill/int8_teacher", distill_trainable(int8))["student"]
    logits = jax.jit(lambda b: teacher_apply(teacher, *(b[n] for n in INPUTS)))
    cache = cache_topk(logits, data.eval_batches(train, c.eval_batch_size), len(train), c.topk)
    np.savez(os.path.join(workdir, "teacher_topk.npz"), **cache)
    offline_train = ArraySource({**train.arrays, **cache})
    offline = offline_distillation_loss(student_apply, inputs=INPUTS, alpha=c.alpha, temperature=c.temperature)
    trained["offline"] = _train(offline, student, offline_train, c, os.path.join(workdir, "offline"), "distill/offline")

    accuracy = {"teacher": acc(teacher_apply, teacher), **{k: acc(student_apply, p) for k, p in trained.items()}}
    few = few_labels(c, student_apply, student, train, cache, acc, accuracy["teacher"], workdir)
    batch = next(iter(data.eval_batches(test, c.throughput_batch)))
    x = tuple(jnp.asarray(batch[k]) for k in INPUTS)
    speed = _minilm.throughput_ratios({"teacher": (teacher_apply, teacher),
                                       "student": (student_apply, trained["student"])}, x, rounds=c.timing_rounds)
    headline = {
        "teacher_accuracy": accuracy["teacher"], "student_accuracy": accuracy["student"],
        "label_only_accuracy": accuracy["label_only"], "retention": accuracy["student"] / accuracy["teacher"],
        "student_params_ratio": count_params(trained["student"]) / count_params(teacher),
        "student_throughput_ratio": speed["student"],
        "int8_teacher.student_accuracy": accuracy["int8_teacher"], "offline.student_accuracy": accuracy["offline"],
        **{f"few_labels.{k}": v for k, v in few.items() if k != "sweep"},
    }
    names = {"teacher": "teacher_accuracy", "KD student": "student_accuracy",
             "KD (int8 teacher)": "int8_teacher.student_accuracy", "KD (offline top-k)": "offline.student_accuracy",
             "label-only": "label_only_accuracy"}
    plot_bars({"accuracy": {label: headline[k] for label, k in names.items()}}, os.path.join(workdir, "accuracy.png"),
              ylabel="test accuracy", ylim=(0, 1), title="distillation: MiniLM teacher -> small student")
    metrics = {"student_params": count_params(trained["student"]), "teacher_params": count_params(teacher),
               "train_examples": len(train), "eval_examples": len(test), "few_labels_sweep": few["sweep"]}
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("distill", run))

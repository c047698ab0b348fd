"""Experiment `warm_start`: does a GloVe start for a new word vocabulary train faster than a random one?

A word-level tweet-sentiment classifier: the tweets are lower-cased and split into words and
punctuation, the vocabulary is the `vocab_size` most frequent train-split words (plus `[PAD]`, `[UNK]`),
and the model is a small `SequenceClassifier` (one post-LN Transformer layer of width 50, masked mean
pooling, linear head). Arms, each over the same seeds (a seed fixes the data order, dropout keys and
every non-embedding init, so paired runs differ only in the word-embedding table):

- `random`: the model's own init (normal, std 0.02);
- `warm`: `init_embeddings(method="vectors")` from GloVe 6B 50d (exact, then lower-cased match;
  unmatched rows sampled from GloVe's mean and covariance), everything trainable;
- `warm_frozen`: the same start, with `train_rows` keeping the GloVe rows fixed (only the unmatched
  rows and the rest of the network train).

Each run is the canonical loop (`fit`), evaluated every `eval_every` steps on the validation split.
Target: the worst final accuracy among the random seeds (so every random seed reaches it; the same rule
as the curriculum experiment). Regime arm `few_labels` (issue 19): the same arms again with the overrides
of `config.few_labels` (few labelled tweets, GloVe rows centred and rescaled to the model's init RMS),
headline keys prefixed `few_labels.`. `steps_to_target` is an arm's first evaluation at or above it, averaged
over seeds (None if a seed never gets there); `speedup` = random / warm. Headline: `warm.steps_to_target`,
`random.steps_to_target`, `speedup`, `warm.final_accuracy`, `random.final_accuracy` (seed means; the
spreads are in `metrics`), `matched_fraction` (vocabulary rows GloVe covers, specials included).
"""

from __future__ import annotations

import collections
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leanjax import data, losses
from leanjax.data.source import to_str
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.experiments._minilm import tweets
from leanjax.models import SequenceClassifier, TransformerConfig, functional
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit, plot_arm_curves, steps_to_target
from leanjax.weights.embeddings import glove_vectors, init_embeddings, train_rows

INPUTS = ("input_ids", "attention_mask")
EMBEDDING = "encoder/embeddings/word/embedding"
SPECIALS = ("[PAD]", "[UNK]")
ARMS = ("random", "warm", "warm_frozen")
# Lower-cased words (letter/digit runs) and single punctuation marks: GloVe 6B's own units, uncased.
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def build_vocab(texts: list[str], size: int, min_count: int = 2) -> list[str]:
    """`[PAD]`, `[UNK]`, then the `size` most frequent words seen at least `min_count` times (ties by
    first appearance, so the vocabulary is deterministic)."""
    counts = collections.Counter(w for t in texts for w in words(t))
    return list(SPECIALS) + [w for w, n in counts.most_common(size) if n >= min_count]


def encode(texts: list[str], vocab: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`(ids int32 [N, seq_len], mask bool)`: truncated, padded with `[PAD]` (0), unknowns -> `[UNK]` (1)."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.zeros((len(texts), seq_len), np.int32)
    for row, text in enumerate(texts):
        tokens = [index.get(w, 1) for w in words(text)][:seq_len]
        ids[row, :len(tokens)] = tokens
    return ids, ids != 0


def _source(examples: list[dict], vocab: list[str], seq_len: int) -> data.ArraySource:
    ids, mask = encode([to_str(e["text"]) for e in examples], vocab, seq_len)
    labels = np.array([e["label"] for e in examples], np.int64)
    return data.ArraySource({"input_ids": ids, "attention_mask": mask, "label": labels})


def _model(config, vocab_size: int, seed: int):
    model_config = TransformerConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_layers=config.num_layers,
        num_heads=config.num_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.seq_len, type_vocab_size=0, dropout=config.dropout)
    return functional(SequenceClassifier(model_config, 3, rngs=nnx.Rngs(seed)))


def _with_embedding(params: dict, table: np.ndarray) -> dict:
    embeddings = params["encoder"]["embeddings"]
    if embeddings["word"]["embedding"].shape != table.shape:
        raise ValueError(f"{EMBEDDING}: model {embeddings['word']['embedding'].shape}, table {table.shape}")
    word = {**embeddings["word"], "embedding": jnp.asarray(table)}
    return {**params, "encoder": {**params["encoder"], "embeddings": {**embeddings, "word": word}}}


def build(config):
    """Vocabulary, GloVe start, the warm arm's params (seed `config.seeds[0]`), loss, metrics, optimizer, data."""
    train = tweets("train", config.train_examples, seed=0)
    vocab = build_vocab([to_str(e["text"]) for e in train], config.vocab_size)
    glove_words, glove = glove_vectors()
    init = init_embeddings(vocab, method="vectors", words=glove_words, vectors=glove, dim=config.hidden_size,
                           rng=config.seeds[0], scale=config.embedding_scale or None,
                           centre=config.embedding_centre)
    apply_fn, params = _model(config, len(vocab), config.seeds[0])
    tx = _launch.config_optimizer(config)
    return Build(params=_with_embedding(params, init.table), tx=tx, seed=config.seeds[0],
                 batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, num_steps=config.num_steps,
                 loss=losses.classification_loss(apply_fn, inputs=INPUTS),
                 metrics=losses.classification_metrics(apply_fn, inputs=INPUTS),
                 train=_source(train, vocab, config.seq_len),
                 eval=_source(tweets(config.eval_split, config.eval_examples, seed=0), vocab, config.seq_len),
                 extra={"init": init, "vocab": vocab})


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def run(config, workdir):
    metrics, headline = _compare(config, workdir)
    if config.few_labels.enabled:
        # The regime arm: the same comparison with few labelled tweets and centred, rescaled GloVe rows.
        few = config.copy_and_resolve_references()
        few.update({k: v for k, v in config.few_labels.items() if k != "enabled"})
        few_metrics, few_headline = _compare(few, os.path.join(workdir, "few_labels"))
        if few_metrics.get("preempted"):
            return few_metrics, {}
        headline.update({f"few_labels.{k}": v for k, v in few_headline.items()})
        metrics["few_labels"] = {**few_metrics, "overrides": dict(config.few_labels)}
    return metrics, headline


def _compare(config, workdir):
    parts = build(config)
    init, vocab = parts.extra["init"], parts.extra["vocab"]
    unknown = set(config.arms) - set(ARMS)
    if unknown or not {"random", "warm"} <= set(config.arms):
        raise _launch.ConfigError(f"config.arms={config.arms}: needs 'random' and 'warm', may add {ARMS[2:]}")
    eval_step = make_eval_step(parts.metrics)

    def eval_fn(params):
        return evaluate(eval_step, params, data.eval_batches(parts.eval, config.eval_batch_size))

    tx = parts.tx
    optimizers = {"random": tx, "warm": tx, "warm_frozen": train_rows(tx, {EMBEDDING: ~init.matched})}
    # One jitted step per optimizer, shared by every seed (and by `random` and `warm`): compiled once.
    train_steps = {arm: make_train_step(parts.loss, optimizers[arm]) for arm in ("random", "warm_frozen")}
    train_steps["warm"] = train_steps["random"]
    curves: dict[str, list] = {arm: [] for arm in config.arms}
    finals: dict[str, list] = {arm: [] for arm in config.arms}
    for seed in config.seeds:
        _, params = _model(config, len(vocab), seed)
        for arm in config.arms:
            start = params if arm == "random" else _with_embedding(params, init.table)
            state = TrainState.create(jax.tree.map(jnp.copy, start), optimizers[arm], jax.random.key(seed))
            result = fit(state, train_steps[arm],
                         data.batches(parts.train, batch_size=config.batch_size, seed=seed),
                         num_steps=config.num_steps, workdir=os.path.join(workdir, arm, f"seed{seed}"),
                         eval_fn=eval_fn, eval_every=config.eval_every, log_every=config.eval_every,
                         progress=config.progress, desc=f"warm_start/{arm}/seed{seed}")
            if result.preempted:
                return {"preempted": True}, {}
            curves[arm].append([(r["step"], r["eval_accuracy"]) for r in result.history if "eval_accuracy" in r])
            finals[arm].append(result.last_eval["accuracy"])

    target = min(finals["random"])
    steps = {arm: [steps_to_target(c, target) for c in curves[arm]] for arm in config.arms}
    mean_steps = {arm: _mean(s) for arm, s in steps.items()}
    speedup = (mean_steps["random"] / mean_steps["warm"]
               if mean_steps["random"] and mean_steps["warm"] else None)
    os.makedirs(workdir, exist_ok=True)
    plot_arm_curves({"validation accuracy": curves}, os.path.join(workdir, "learning_curves.png"),
                    targets={"validation accuracy": target},
                    title="word-level tweet sentiment: GloVe vs random embeddings")
    headline = {"warm.steps_to_target": mean_steps["warm"], "random.steps_to_target": mean_steps["random"],
                "speedup": speedup, "warm.final_accuracy": float(np.mean(finals["warm"])),
                "random.final_accuracy": float(np.mean(finals["random"])),
                "matched_fraction": init.matched_fraction}
    metrics = {
        "target": target, "target_rule": "worst final validation accuracy among the random seeds",
        "seeds": list(config.seeds), "resolution_steps": config.eval_every,
        "steps_to_target": steps, "final_accuracy": finals,
        **{f"{arm}.final_accuracy_std": float(np.std(finals[arm])) for arm in config.arms},
        **{f"{arm}.final_accuracy_mean": float(np.mean(finals[arm])) for arm in config.arms},
        **{f"{arm}.steps_to_target_mean": mean_steps[arm] for arm in config.arms},
        "speedup_per_seed": [r / w if r and w else None for r, w in zip(steps["random"], steps["warm"])],
        "embedding_init": init.report(), "vocab_size": len(vocab),
        "eval_curves": {arm: [[[s, a] for s, a in c] for c in runs] for arm, runs in curves.items()},
    }
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("warm_start", run))

"""Per-example scores, computed inside the jitted train step and kept by example id.

The train step already holds each example's logits, so its loss, EL2N (the L2 norm of softmax minus
one-hot; Paul et al. 2021, arXiv:2107.07075), margin (true-class logit minus the best other one) and
correctness cost a few vector ops more. `with_scores(train_step)` scatters them into a `ScoreStore`:
arrays of length `num_examples` indexed by the batch's `index` key (add it with `indexed(source)`),
which also counts forgetting events (correct, then wrong on a later visit; Toneva et al. 2019,
arXiv:1812.05159). The store lives inside the train state (`ScoredState`), so `fit` checkpoints and
restores it with the params: a resumed run continues with the same scores.

`score_source` computes the same scores with a fixed (reference or proxy) model over a whole source.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from leanjax import losses
from leanjax.data.pipeline import eval_batches
from leanjax.data.source import Source

SCORE_NAMES = ("loss", "el2n", "margin", "correct")


@dataclasses.dataclass(frozen=True)
class IndexedSource:
    """`source` with each example's position added as `index` (int32): the key scores are kept by."""

    source: Source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index) -> dict[str, Any]:
        index = operator.index(index)
        example = self.source[index]
        if "index" in example:
            raise ValueError(f"the example already has an 'index' key: {sorted(example)}")
        return {"index": np.int32(index % len(self.source)), **example}


def indexed(source: Source) -> IndexedSource:
    return IndexedSource(source)


def example_scores(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example `loss`, `el2n`, `margin`, `correct` from logits [B, C] (or [B, T, C] for sequences,
    where each is averaged over the T positions) and integer labels [B] / [B, T]."""
    logits = logits.astype(jnp.float32)
    loss = losses.cross_entropy(logits, labels)
    el2n = jnp.linalg.norm(jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1]), axis=-1)
    true = jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    margin = true - others.max(-1)
    scores = {"loss": loss, "el2n": el2n, "margin": margin, "correct": losses.correct(logits, labels)}
    if logits.ndim == 3:
        scores = {k: v.mean(-1) for k, v in scores.items()}
    return scores


def scored_classification_loss(apply_fn: Callable, *, inputs: str | tuple[str, ...] = "image") -> Callable:
    """A classification `loss_fn(params, batch, rng)` whose metrics carry `per_example` scores.

    An optional `batch['weight']` weights each example's loss (InfoBatch rescaling, padding at 0):
    the loss is `sum(weight * ce) / batch_size`, so weights of 1 give the plain mean.
    """
    names = (inputs,) if isinstance(inputs, str) else inputs

    def loss_fn(params: Any, batch: dict, rng: jax.Array):
        logits = apply_fn(params, *(batch[n] for n in names), dropout_rng=rng)
        scores = example_scores(logits, batch["label"])
        weight = batch.get("weight", jnp.ones_like(scores["loss"]))
        loss = (weight * scores["loss"]).sum() / scores["loss"].shape[0]
        return loss, {"accuracy": scores["correct"].mean(), "per_example": scores}

    return loss_fn


@struct.dataclass
class ScoreStore:
    """Scores by example id. `loss`/`el2n`/`margin`/`correct` hold the last visit's values; `el2n_avg`
    an exponential moving average over visits; `forgetting` the count of correct -> wrong transitions;
    `visits` how often each example was trained on (0: never, its other entries are meaningless)."""

    loss: jax.Array
    el2n: jax.Array
    margin: jax.Array
    correct: jax.Array
    el2n_avg: jax.Array
    forgetting: jax.Array
    visits: jax.Array

    @classmethod
    def create(cls, num_examples: int) -> "ScoreStore":
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        # Distinct buffers per field: the step donates the store, and XLA refuses a buffer donated twice.
        def zeros(dtype=jnp.float32):
            return jnp.zeros((num_examples,), dtype)

        return cls(loss=zeros(), el2n=zeros(), margin=zeros(), correct=zeros(), el2n_avg=zeros(),
                   forgetting=zeros(jnp.int32), visits=zeros(jnp.int32))

    def update(self, index: jax.Array, scores: dict[str, jax.Array], momentum: float = 0.9,
               mask: jax.Array | None = None) -> "ScoreStore":
        """Scatter one batch's scores. Rows with `mask` False (padding) leave the store unchanged.

        An index that appears twice in one batch keeps one of its rows (scatter order is unspecified).
        """
        if mask is not None:  # padding rows scatter out of bounds and are dropped
            index = jnp.where(mask, index, self.visits.shape[0])
        first = self.visits[index] == 0
        avg = jnp.where(first, scores["el2n"], momentum * self.el2n_avg[index] + (1 - momentum) * scores["el2n"])
        forgot = (self.correct[index] > 0.5) & (scores["correct"] < 0.5) & ~first

        def put(store, values):
            return store.at[index].set(values.astype(store.dtype), mode="drop")

        return self.replace(
            loss=put(self.loss, scores["loss"]), el2n=put(self.el2n, scores["el2n"]),
            margin=put(self.margin, scores["margin"]), correct=put(self.correct, scores["correct"]),
            el2n_avg=put(self.el2n_avg, avg),
            forgetting=put(self.forgetting, self.forgetting[index] + forgot),
            visits=put(self.visits, self.visits[index] + 1))


@struct.dataclass
class ScoredState:
    """A train state with its score store: one pytree, checkpointed and restored together by `fit`."""

    train: Any
    scores: ScoreStore

    @property
    def params(self) -> Any:
        return self.train.params

    @property
    def step(self) -> jax.Array:
        return self.train.step


def with_scores(train_step: Callable, momentum: float = 0.9, donate: bool = True) -> Callable:
    """Turn an un-jitted `train_step(state, batch)` (`make_train_step(..., jit=False)`) whose loss_fn
    puts `per_example` scores in its metrics into a jitted `step(ScoredState, batch)` that keeps them.

    The batch must carry `index`; the per-example arrays leave the metrics (fit logs scalars only) and
    their batch means stay, prefixed `score_`.
    """

    def step(state: ScoredState, batch: dict):
        if "index" not in batch:
            raise KeyError(f"the batch has no 'index' key (wrap the source with indexed()): {sorted(batch)}")
        train, metrics = train_step(state.train, batch)
        metrics = dict(metrics)
        if "per_example" not in metrics:
            raise KeyError("the loss_fn returned no metrics['per_example'] (see scored_classification_loss)")
        per_example = metrics.pop("per_example")
        mask = batch["weight"] > 0 if "weight" in batch else None
        scores = state.scores.update(batch["index"], per_example, momentum, mask)
        metrics.update({f"score_{k}": v.mean() for k, v in per_example.items()})
        return ScoredState(train=train, scores=scores), metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def score_source(logits_fn: Callable[[Any, dict], jax.Array], params: Any, source: Source, *,
                 batch_size: int, label_key: str = "label") -> dict[str, np.ndarray]:
    """Scores of every example of `source` under a fixed model: `{name: float32 [len(source)]}`.

    `logits_fn(params, batch) -> logits` (no dropout). This is the reference-model / proxy-run route.
    """
    @jax.jit
    def batch_scores(params, batch):
        return example_scores(logits_fn(params, batch), batch[label_key])

    parts = []
    for batch in eval_batches(source, batch_size):
        scores = jax.device_get(batch_scores(params, batch))
        parts.append({k: v[batch["mask"]] for k, v in scores.items()})
    return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in SCORE_NAMES}

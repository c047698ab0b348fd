"""Losses and per-example metrics for classification and language modelling.

Each function returns per-example values where that is natural, so callers can weight, mask, or keep
them as per-example scores (curriculum and data sampling reuse them), and a mean where a scalar is needed.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32 (logits [..., C], integer labels [...])."""
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return values.mean()
    mask = mask.astype(values.dtype)
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def classification_loss(apply_fn: Callable, *, inputs: str | tuple[str, ...] = "image",
                        label_smoothing: float = 0.0) -> Callable:
    """`loss_fn(params, batch, rng) -> (loss, metrics)` for `apply_fn(params, *batch[inputs]) -> logits`."""
    names = (inputs,) if isinstance(inputs, str) else inputs

    def loss_fn(params: Any, batch: dict, rng: jax.Array):
        logits = apply_fn(params, *(batch[n] for n in names), dropout_rng=rng)
        per_example = cross_entropy(logits, batch["label"], label_smoothing)
        return per_example.mean(), {"accuracy": correct(logits, batch["label"]).mean()}

    return loss_fn


def classification_metrics(apply_fn: Callable, *, inputs: str | tuple[str, ...] = "image") -> Callable:
    """`metrics_fn(params, batch) -> per-example {'loss', 'accuracy'}` for evaluation (no dropout)."""
    names = (inputs,) if isinstance(inputs, str) else inputs

    def metrics_fn(params: Any, batch: dict):
        logits = apply_fn(params, *(batch[n] for n in names))
        return {"loss": cross_entropy(logits, batch["label"]), "accuracy": correct(logits, batch["label"])}

    return metrics_fn


def lm_loss(apply_fn: Callable) -> Callable:
    """Next-token loss for `apply_fn(params, inputs) -> logits [B, T, V]` on `{'inputs', 'targets'}`."""

    def loss_fn(params: Any, batch: dict, rng: jax.Array):
        logits = apply_fn(params, batch["inputs"], dropout_rng=rng)
        per_token = cross_entropy(logits, batch["targets"])
        return masked_mean(per_token, batch.get("target_mask")), {}

    return loss_fn


def lm_metrics(apply_fn: Callable) -> Callable:
    """Per-example mean next-token loss and accuracy, for evaluation."""

    def metrics_fn(params: Any, batch: dict):
        logits = apply_fn(params, batch["inputs"])
        per_token = cross_entropy(logits, batch["targets"])
        hits = correct(logits, batch["targets"])
        return {"loss": per_token.mean(-1), "accuracy": hits.mean(-1)}

    return metrics_fn

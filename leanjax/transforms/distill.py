"""Knowledge distillation as loss builders: the teacher is a params argument, frozen by the train step.

- `kd_loss(student_logits, teacher_logits, temperature)`: per-example KL(teacher_T || student_T) * T^2
  (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531; the
  T^2 keeps the gradient scale independent of T).
- `topk_kd_loss(student_logits, values, indices, temperature)`: the same against a teacher cached as its
  top-k logits (renormalised over those k classes), so distillation runs without the teacher in memory.
- `hidden_loss(student_h, teacher_h, projection)`: MSE after a learned linear map of the student's
  hidden states to the teacher's width (FitNets, Romero et al. 2015, arXiv:1412.6550).
- `attention_transfer_loss(student_a, teacher_a)`: distance between L2-normalised attention maps
  `sum_c |a|^p` (Zagoruyko & Komodakis 2017, arXiv:1612.03928).
- `distillation_loss(student_apply, teacher_apply, ...)`: `loss_fn(params, batch, rng)` for
  `leanjax.step.make_train_step`, with `params = {"student": ..., "teacher": ...}`; pass
  `trainable=distill_trainable(params)` so the teacher gets neither gradients nor optimizer state. The
  teacher runs inside the same jitted step, under `stop_gradient`; its params may be typed weights
  (an int8 teacher: `quantize(...)`, with `teacher_apply = leanjax.transforms.apply(apply_fn)`).
- `cache_topk(...)` / `topk_kd_loss`: the offline mode, teacher logits computed once per example id.

Beyer et al. 2022 ("Knowledge distillation: A good teacher is patient and consistent",
arXiv:2106.05237) find teacher and student should see the same augmented view; here both see one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leanjax.losses import correct, cross_entropy


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Per-example `T^2 * KL(softmax(teacher/T) || softmax(student/T))`, float32 (Hinton et al. 2015,
    arXiv:1503.02531; the `T^2` keeps its gradients on the scale of the label loss).

    Args:
      student_logits: `[..., C]`.
      teacher_logits: `[..., C]`.
      temperature: T.

    Returns:
      The loss per example, `[...]`.
    """
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return temperature ** 2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def topk_kd_loss(student_logits: jax.Array, values: jax.Array, indices: jax.Array,
                 temperature: float = 1.0) -> jax.Array:
    """`kd_loss` against a teacher known by its top-k logits only.

    The teacher's distribution is renormalised over its k classes and the student's log-probabilities (over
    all classes) are read at them: cross-entropy minus the teacher's entropy, so it equals `kd_loss` when k
    covers every class.

    Args:
      student_logits: `[..., C]`.
      values: the teacher's top-k logits, `[..., k]`.
      indices: their classes, `[..., k]`.
      temperature: T.

    Returns:
      The loss per example, `[...]`.
    """
    t = jax.nn.log_softmax(values.astype(jnp.float32) / temperature, axis=-1)
    s_all = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    s = jnp.take_along_axis(s_all, indices.astype(jnp.int32), axis=-1)
    return temperature ** 2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def hidden_loss(student_h: jax.Array, teacher_h: jax.Array, projection: dict[str, jax.Array]) -> jax.Array:
    """Per-example mean squared error between `student_h @ kernel + bias` and `teacher_h`, averaged over
    every axis but the first. `projection = {"kernel": [d_s, d_t], "bias": [d_t]}` is trained with the
    student (make it with `init_projection`)."""
    projected = student_h.astype(jnp.float32) @ projection["kernel"] + projection["bias"]
    err = jnp.square(projected - teacher_h.astype(jnp.float32))
    return err.reshape(err.shape[0], -1).mean(-1)


def init_projection(key: jax.Array, student_dim: int, teacher_dim: int) -> dict[str, jax.Array]:
    """A `hidden_loss` projection, lecun-normal kernel and zero bias."""
    kernel = jax.random.normal(key, (student_dim, teacher_dim), jnp.float32) / np.sqrt(student_dim)
    return {"kernel": kernel, "bias": jnp.zeros((teacher_dim,), jnp.float32)}


def attention_map(a: jax.Array, p: float = 2.0) -> jax.Array:
    """`[B, ..., C]` activations -> `[B, prod(...)]` L2-normalised map of `sum_c |a|^p`."""
    q = jnp.sum(jnp.abs(a.astype(jnp.float32)) ** p, axis=-1).reshape(a.shape[0], -1)
    return q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def attention_transfer_loss(student_a: jax.Array, teacher_a: jax.Array, p: float = 2.0) -> jax.Array:
    """Per-example `||map(student) - map(teacher)||_2` (the paper's beta/2 weight is the caller's);
    the maps must have the same spatial (or token) size, not the same channel count."""
    return jnp.linalg.norm(attention_map(student_a, p) - attention_map(teacher_a, p), axis=-1)


def distill_trainable(params: dict[str, Any], student_mask: Any | None = None) -> dict[str, Any]:
    """The trainable mask for `{"student": ..., "teacher": ...}` params: the teacher is frozen.

    Args:
      params: `{"student": ..., "teacher": ..., ...}`; other top-level keys (e.g. a projection) are trained.
      student_mask: masks the student (default: all of it trains).

    Returns:
      A bool tree of `params`' structure.
    """
    if "teacher" not in params or "student" not in params:
        raise KeyError(f"distillation params need 'student' and 'teacher' keys, got {sorted(params)}")
    mask = {k: jax.tree.map(lambda _: True, v) for k, v in params.items()}
    mask["teacher"] = jax.tree.map(lambda _: False, params["teacher"])
    if student_mask is not None:
        mask["student"] = student_mask
    return mask


def distillation_loss(student_apply: Callable, teacher_apply: Callable, *, inputs: str | Sequence[str],
                      alpha: float = 0.5, temperature: float = 2.0) -> Callable:
    """Online distillation: `alpha * kd_loss(T) + (1 - alpha) * cross_entropy(labels)`, batch-averaged.

    `teacher_apply(teacher_params, *inputs)` runs deterministically under `stop_gradient`; `student_apply`
    gets the dropout key.

    Args:
      student_apply: `student_apply(params, *inputs, dropout_rng=...) -> logits`.
      teacher_apply: `teacher_apply(params, *inputs) -> logits` (same classes).
      inputs: the batch keys passed as inputs, e.g. `("input_ids", "attention_mask")`.
      alpha: the weight of the distillation term.
      temperature: T.

    Returns:
      `loss_fn({"student", "teacher"}, batch, rng) -> (loss, metrics)` with metrics `accuracy`, `kd`, `ce`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    names = (inputs,) if isinstance(inputs, str) else tuple(inputs)

    def loss_fn(params, batch, rng):
        x = [batch[n] for n in names]
        teacher_logits = jax.lax.stop_gradient(teacher_apply(jax.lax.stop_gradient(params["teacher"]), *x))
        logits = student_apply(params["student"], *x, dropout_rng=rng)
        kd = kd_loss(logits, teacher_logits, temperature).mean()
        ce = cross_entropy(logits, batch["label"]).mean()
        loss = alpha * kd + (1.0 - alpha) * ce
        return loss, {"accuracy": correct(logits, batch["label"]).mean(), "kd": kd, "ce": ce}

    return loss_fn


def offline_distillation_loss(student_apply: Callable, *, inputs: str | Sequence[str], alpha: float = 0.5,
                              temperature: float = 2.0) -> Callable:
    """`distillation_loss` against cached teacher logits: the batch carries `teacher_values` and
    `teacher_indices` (from `cache_topk`), so no teacher runs during training.

    Args:
      student_apply: `student_apply(params, *inputs, dropout_rng=...) -> logits`.
      inputs: the batch keys passed as inputs.
      alpha: the weight of the distillation term (`topk_kd_loss`).
      temperature: T.

    Returns:
      `loss_fn(student_params, batch, rng) -> (loss, metrics)` with metrics `accuracy`, `kd`, `ce`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    names = (inputs,) if isinstance(inputs, str) else tuple(inputs)

    def loss_fn(params, batch, rng):
        logits = student_apply(params, *(batch[n] for n in names), dropout_rng=rng)
        kd = topk_kd_loss(logits, batch["teacher_values"], batch["teacher_indices"], temperature).mean()
        ce = cross_entropy(logits, batch["label"]).mean()
        return alpha * kd + (1.0 - alpha) * ce, {"accuracy": correct(logits, batch["label"]).mean(),
                                                  "kd": kd, "ce": ce}

    return loss_fn


def cache_topk(teacher_logits_fn: Callable[[Any], jax.Array], batches: Iterable[dict], num_examples: int,
               k: int) -> dict[str, np.ndarray]:
    """Run the teacher once over `batches` and keep each example's top-k logits.

    Store the arrays next to the data (`np.savez`) and add them to the training source as extra fields.

    Args:
      teacher_logits_fn: `fn(batch) -> [B, C]`, typically a jitted closure over the teacher's params.
      batches: every example once, in example-id order (e.g. `leanjax.data.eval_batches`, whose padded rows
        carry `mask=False`).
      num_examples: N.
      k: logits kept per example.

    Returns:
      `{"teacher_values": float32 [N, k], "teacher_indices": int32 [N, k]}`, row i for example i.
    """
    top = jax.jit(lambda logits: jax.lax.top_k(logits.astype(jnp.float32), k))
    values, indices = [], []
    for batch in batches:
        v, i = jax.device_get(top(teacher_logits_fn(batch)))
        keep = np.asarray(batch["mask"]) if "mask" in batch else slice(None)
        values.append(v[keep])
        indices.append(i[keep])
    out = {"teacher_values": np.concatenate(values), "teacher_indices": np.concatenate(indices).astype(np.int32)}
    if len(out["teacher_values"]) != num_examples:
        raise ValueError(f"cached {len(out['teacher_values'])} examples, expected {num_examples}: "
                         "pass every example once, in order (leanjax.data.eval_batches)")
    return out


def teacher_labelled_pool(arrays: dict[str, np.ndarray], cache: dict[str, np.ndarray],
                          num_labelled: int) -> dict[str, np.ndarray]:
    """A transfer set (Hinton et al. 2015, https://arxiv.org/abs/1503.02531): the first `num_labelled`
    rows keep their labels, every other row is unlabelled and takes the teacher's top-1 class instead;
    every row carries the teacher's cached top-k logits (`cache_topk`) for the KD term.

    Args:
      arrays: the pool's arrays (`label` among them), one row per example.
      cache: `cache_topk`'s output for the same rows, in the same order.
      num_labelled: how many leading rows the student may see labelled.

    Returns:
      `arrays` and `cache` merged, `label` replaced by the teacher's class past `num_labelled`, and a
      boolean `labelled` field.
    """
    n = len(arrays["label"])
    if len(cache["teacher_indices"]) != n:
        raise ValueError(f"teacher cache has {len(cache['teacher_indices'])} rows, the pool {n}")
    if not 0 <= num_labelled <= n:
        raise ValueError(f"num_labelled={num_labelled} must be in [0, {n}] (the pool's size)")
    labelled = np.arange(n) < num_labelled
    label = np.where(labelled, arrays["label"], cache["teacher_indices"][:, 0]).astype(arrays["label"].dtype)
    return {**arrays, **cache, "label": label, "labelled": labelled}

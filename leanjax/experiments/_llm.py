"""Shared pieces of LLM fine-tuning experiments: the arms' params, the packed-chat loss, compiled peaks.

- `arm_params`: the full fine-tune (f32 params, every one trained), LoRA (Hu et al. 2021,
  https://arxiv.org/abs/2106.09685) over a frozen bf16 base, QLoRA (Dettmers et al. 2023,
  https://arxiv.org/abs/2305.14314) over an NF4 base; adapters in f32 (an AdamW update in bf16 rounds away).
- `packed_lm_loss`: next-token loss on packed rows, only where `loss_mask` (assistant targets), through the
  chunked vocabulary cross-entropy (`leanjax.losses_chunked`), so no `[tokens, vocab]` f32 logits exist.
- `packed_data`: the configured chat JSONL (default: the shipped tweets example) packed into rows.
- `compiled_peak`: the train step compiled from abstract shapes only (`jax.ShapeDtypeStruct`s), so any model
  size works on a small CPU; peak = arguments + outputs + temporaries - aliased.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from leanjax import losses, transforms
from leanjax.audit.compiled import Memory
from leanjax.data import chat
from leanjax.losses_chunked import chunked_cross_entropy
from leanjax.state import TrainState
from leanjax.step import make_train_step

ARMS = ("full", "lora", "qlora", "qlora_remat")


def _cast_plain(params: Any, dtype) -> Any:
    """Plain float arrays and LoRA bases cast to `dtype`; adapters stay as they are."""
    def one(x):
        if isinstance(x, transforms.LoRA):
            base = x.base if transforms.is_typed(x.base) else x.base.astype(dtype)
            return x.replace_base(base)
        if transforms.is_typed(x) or not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(dtype)
    return jax.tree.map(one, params, is_leaf=transforms.is_typed)


def arm_params(params: Any, arm: str, *, kernels: str, rank: int, alpha: float, group_size: int, key: jax.Array,
               base_dtype=jnp.bfloat16, quantize_rows: str | None = None) -> Any:
    """The params of one arm (`ARMS`; `qlora_remat` has `qlora`'s params).

    Args:
      params: the model's f32 params (a nested dict; abstract `ShapeDtypeStruct`s work under `jax.eval_shape`).
      arm: 'full' (returned as is), 'lora', 'qlora' or 'qlora_remat'.
      kernels: regex of the layer kernels that get adapters (and an NF4 base in QLoRA), e.g. r"layers/.*kernel".
      rank, alpha: the adapters' rank and scale numerator.
      group_size: NF4 block size.
      key: the adapters' init key.
      base_dtype: dtype of everything frozen and not quantized (embeddings, norms, LoRA's bases).
      quantize_rows: regex of further leaves that QLoRA stores in NF4 with one scale group per row (an
        input-embedding table that is only gathered from, e.g. an untied model's), or None.

    Returns:
      The arm's params; train them with `trainable_mask(params, arm)`.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: use one of {ARMS}")
    if arm == "full":
        return params
    # Adapters from the f32 kernels (so they stay f32), then the base cast, then quantized from the cast base
    # (so NF4 scales, and what a matmul dequantizes to, are in `base_dtype`).
    params = _cast_plain(transforms.lora(params, kernels, rank=rank, alpha=alpha, key=key,
                                                   layout=transforms.stacked_io), base_dtype)
    if arm.startswith("qlora"):
        params = transforms.quantize(params, kernels, bits=4, scheme="nf4", group_size=group_size)
        if quantize_rows:
            params = transforms.quantize(params, quantize_rows, bits=4, scheme="nf4", group_size=group_size, axis=-1)
    return params


def trainable_mask(params: Any, arm: str) -> Any:
    """Bools over `params` (concrete or abstract): every float leaf for 'full', the adapters otherwise."""
    def one(x):
        if transforms.is_typed(x):
            return x.trainable_mask()
        return arm == "full" and jnp.issubdtype(x.dtype, jnp.floating)
    return jax.tree.map(one, params, is_leaf=transforms.is_typed)


def packed_lm_loss(hidden_fn: Callable, head_fn: Callable, *, chunk_size: int = 1024,
                   soft_cap: float | None = None) -> Callable:
    """`loss_fn(params, batch, rng) -> (loss, metrics)` on packed rows (`leanjax.data.chat.Packed.batch`).

    Args:
      hidden_fn: `(params, batch) -> final hidden states [B, T, D]` (after the final norm); it reads
        `batch['inputs']`, `batch['positions']` and `batch['segment_ids']`.
      head_fn: `params -> (output embedding, vocab_axis)`, e.g. the tied table with vocab_axis 0.
      chunk_size: tokens per chunk of the vocabulary cross-entropy.
      soft_cap: the final logit soft-cap (Gemma 2), or None.

    Returns:
      The loss: mean over the targets where `batch['loss_mask']`, with `metrics['tokens']` their count.
    """
    def loss_fn(params, batch, rng):
        del rng
        hidden = hidden_fn(params, batch)
        embedding, vocab_axis = head_fn(params)
        per_token = chunked_cross_entropy(hidden, embedding, batch["targets"], chunk_size=chunk_size,
                                          vocab_axis=vocab_axis, soft_cap=soft_cap)
        mask = batch["loss_mask"]
        return losses.masked_mean(per_token, mask), {"tokens": mask.sum()}

    return loss_fn


def abstract_batch(batch: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of one packed batch (`Packed.batch`)."""
    ints = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    return {"inputs": ints, "targets": ints, "positions": ints, "segment_ids": ints,
            "loss_mask": jax.ShapeDtypeStruct((batch, seq_len), jnp.bool_)}


def compiled_peak(loss_fn: Callable, params: Any, mask: Any, tx: optax.GradientTransformation,
                  batch: Any, *, micro_batches: int = 1) -> Memory:
    """Memory of the compiled train step (`make_train_step` over `transforms.apply(loss_fn)`, state donated,
    gradients accumulated over `micro_batches`), compiled from the shapes of `params` and `batch` only
    (abstract or concrete; nothing is run)."""
    def as_shape(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    params = jax.tree.map(as_shape, params)
    state = jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.key(0), trainable=mask), params)
    step = make_train_step(transforms.apply(loss_fn), tx, trainable=mask, grad_accum_steps=micro_batches)
    return Memory.of(step.lower(state, jax.tree.map(as_shape, batch)).compile())


EXAMPLE = Path(chat.__file__).parent / "chat_example"


def packed_data(config):
    """`(Packed, tokenizer, stats)` of the configured chat JSONL, assistant-only loss masks."""
    tokenizer = chat.load_chat_tokenizer(config.tokenizer or EXAMPLE)
    conversations = chat.read_chat_jsonl(config.data or EXAMPLE / "chat.jsonl", limit=config.max_examples or None)
    docs = [tokenizer.encode_chat(c) for c in conversations]
    pad = tokenizer.token_id("pad_token") or 0
    packed = chat.pack(docs, config.seq_len, pad_id=pad)
    stats = {"documents": len(docs), "rows": int(packed.inputs.shape[0]), "truncated": packed.truncated,
             "packing_efficiency": packed.efficiency,
             "padded_efficiency": chat.padded_efficiency(docs, config.seq_len),
             "assistant_target_fraction": float(packed.loss_mask.sum() / max((packed.segment_ids > 0).sum(), 1))}
    return packed, tokenizer, stats

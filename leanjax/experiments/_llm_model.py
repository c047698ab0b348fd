"""The calls `llm_finetune` makes of its decoder (`leanjax.models.decoder`), over plain params dicts.

Arms transform params as pytrees (LoRA, NF4) and compile from abstract shapes, so the experiment works on
`nnx.to_pure_dict` params and rebuilds the module inside the loss (`nnx.merge`), as
`leanjax.models.functional` does for the other models.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from flax import nnx

from leanjax.experiments import _llm
from leanjax.models.decoder import PRESETS, Decoder, DecoderConfig, preset, resized

Config = DecoderConfig
KERNELS = r"layers/(q|k|v|o|gate|up|down)/kernel"
__all__ = ["KERNELS", "PRESETS", "Config", "head", "init_params", "logits", "loss_fn", "model", "peft_spec",
           "preset", "sized"]
sized = resized


@functools.lru_cache(maxsize=32)
def _graphdef(config: DecoderConfig):
    return nnx.graphdef(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))


def model(config: DecoderConfig, params: dict) -> Decoder:
    """The module holding `params` (which may be typed weights or abstract shapes)."""
    return nnx.merge(_graphdef(config), params)


def init_params(config: DecoderConfig, key: jax.Array) -> dict:
    """Random f32 params (normal(0.02) kernels, unit norms); works under `jax.eval_shape`."""
    return nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(key))))


def head(config: DecoderConfig, params: dict) -> tuple[Any, int]:
    """The output embedding and its vocabulary axis."""
    return (params["embed"]["embedding"], 0) if config.tie_word_embeddings else (params["lm_head"]["kernel"], 1)


def logits(config: DecoderConfig, params: dict, inputs, positions, segment_ids):
    """f32 logits `[B, T, V]`: for tests and generation, not for training."""
    return model(config, params)(inputs, positions, segment_ids)


def loss_fn(config: DecoderConfig, *, chunk_size: int):
    """The packed, assistant-masked, chunked-cross-entropy loss of this model (`_llm.packed_lm_loss`)."""
    def hidden(params, batch):
        return model(config, params).hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
    return _llm.packed_lm_loss(hidden, lambda params: head(config, params), chunk_size=chunk_size,
                               soft_cap=config.final_softcap)


def peft_spec(config: DecoderConfig, *, batch: int, seq_len: int, rank: int, alpha: float, steps: int) -> dict:
    """The `_peft_bench` JSON for the same Llama-style model and LoRA targets (every projection)."""
    return {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size, "num_layers": config.num_layers,
            "num_heads": config.num_heads, "num_kv_heads": config.num_kv_heads, "head_dim": config.head_dim,
            "rope_theta": config.rope.theta, "rms_norm_eps": config.norm_eps,
            "tie_word_embeddings": config.tie_word_embeddings, "batch": batch, "seq_len": seq_len,
            "rank": rank, "alpha": alpha, "steps": steps, "warmup": 2,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}

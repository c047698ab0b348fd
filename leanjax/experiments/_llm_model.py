"""The decoder that `llm_finetune` trains and compiles, behind the few calls the experiment makes.

STAND-IN: issue 16 part A (`leanjax.models.decoder`, branch llm-model) owns the NNX decoder, HF loading,
fixtures and generation. Until it is merged this module holds a compact functional decoder with the same
structure (Llama / Qwen / Gemma style: RoPE, grouped-query attention through `jax.nn.dot_product_attention`,
RMSNorm, SwiGLU/GeGLU, optional qkv bias, q/k norm, embedding scaling, final logit soft-cap, tied or untied
head; layers in one `lax.scan` with `checkpoint_name` tags and a remat policy), so the memory figures and
the training loop are real. When part A lands, `preset`, `init_params` and `hidden_states` call it instead.

Params are a plain dict (layer weights stacked over a leading layer axis), so typed weights (LoRA, NF4)
replace leaves directly; kernels are `[in, out]`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from leanjax.data.chat import segment_mask
from leanjax.experiments import _llm
from leanjax.models.remat import checkpoint_policy

KERNELS = r"layers/(q|k|v|o|gate|up|down)"


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    qkv_bias: bool = False         # Qwen 2.5
    qk_norm: bool = False          # Qwen 3, Gemma 3
    activation: str = "silu"       # SwiGLU; "gelu" = GeGLU (Gemma)
    norm_offset: float = 0.0       # Gemma: scale = 1 + w
    embed_scale: bool = False      # Gemma: embeddings times sqrt(hidden_size)
    final_logit_softcap: float | None = None  # Gemma 2
    remat: str = "none"
    dtype: str = "float32"         # activations
    attention_chunk: int = 0       # queries per block of a checkpointed blockwise attention (0: one call)


PRESETS = {
    "llama-3.2-1b": Config(128_256, 2048, 8192, 16, 32, 8, 64),
    "llama-3.2-3b": Config(128_256, 3072, 8192, 28, 24, 8, 128),
    "llama-3.1-8b": Config(128_256, 4096, 14_336, 32, 32, 8, 128, tie_word_embeddings=False),
    "qwen2.5-0.5b": Config(151_936, 896, 4864, 24, 14, 2, 64, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True),
    "qwen3-0.6b": Config(151_936, 1024, 3072, 28, 16, 8, 128, rope_theta=1e6, norm_eps=1e-6, qk_norm=True),
    "gemma-3-1b": Config(262_144, 1152, 6912, 26, 4, 1, 256, rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
                         activation="gelu", norm_offset=1.0, embed_scale=True),
    "gemma-2-2b": Config(256_000, 2304, 9216, 26, 8, 4, 256, rope_theta=1e4, norm_eps=1e-6, activation="gelu",
                         norm_offset=1.0, embed_scale=True, final_logit_softcap=30.0),
    "mistral-7b": Config(32_768, 4096, 14_336, 32, 32, 8, 128, rope_theta=1e6, tie_word_embeddings=False),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: use one of {sorted(PRESETS)}")
    return PRESETS[name]


def init_params(config: Config, key: jax.Array) -> dict:
    """Random f32 params (normal(0.02) kernels, unit norms); works under `jax.eval_shape`."""
    c, n = config, config.num_layers
    keys = iter(jax.random.split(key, 16))
    normal = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    norm = lambda *shape: jnp.full(shape, 0.0 if c.norm_offset else 1.0, jnp.float32)  # noqa: E731
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    layers = {"attn_norm": norm(n, c.hidden_size), "mlp_norm": norm(n, c.hidden_size),
              "q": normal(n, c.hidden_size, q), "k": normal(n, c.hidden_size, kv), "v": normal(n, c.hidden_size, kv),
              "o": normal(n, q, c.hidden_size), "gate": normal(n, c.hidden_size, c.intermediate_size),
              "up": normal(n, c.hidden_size, c.intermediate_size),
              "down": normal(n, c.intermediate_size, c.hidden_size)}
    if c.qkv_bias:
        layers.update(q_bias=jnp.zeros((n, q)), k_bias=jnp.zeros((n, kv)), v_bias=jnp.zeros((n, kv)))
    if c.qk_norm:
        layers.update(q_norm=norm(n, c.head_dim), k_norm=norm(n, c.head_dim))
    params = {"embed": normal(c.vocab_size, c.hidden_size), "layers": layers, "final_norm": norm(c.hidden_size)}
    if not c.tie_word_embeddings:
        params["lm_head"] = normal(c.hidden_size, c.vocab_size)
    return params


def _rms_norm(x, scale, eps, offset):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
    return (y * (offset + scale.astype(jnp.float32))).astype(x.dtype)


def _rope(x, positions, theta):
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None, None].astype(jnp.float32) * freqs  # [B, T, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def _attention(q, k, v, mask, scale, chunk: int):
    """`jax.nn.dot_product_attention`, or with `chunk` a scan over blocks of `chunk` queries, each block
    checkpointed: the backward pass recomputes one block's `[B, H, chunk, T]` scores at a time instead of
    keeping every layer's `[B, H, T, T]` (what a flash-attention kernel does on GPU)."""
    t = q.shape[1]
    if not chunk or chunk >= t or t % chunk:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)
    n = t // chunk
    blocks = q.reshape(q.shape[0], n, chunk, *q.shape[2:]).swapaxes(0, 1)
    masks = jnp.broadcast_to(mask, (mask.shape[0], 1, t, mask.shape[-1]))
    masks = masks.reshape(mask.shape[0], 1, n, chunk, -1).transpose(2, 0, 1, 3, 4)

    @jax.checkpoint
    def one(_, xs):
        q_block, mask_block = xs
        return None, jax.nn.dot_product_attention(q_block, k, v, mask=mask_block, scale=scale)

    _, out = jax.lax.scan(one, None, (blocks, masks))
    return out.swapaxes(0, 1).reshape(q.shape)


def _layer(c: Config, p: dict, h, positions, mask, cache=None):
    """One block. With `cache = (k_cache, v_cache, start)` ([B, T_max, KV, hd] each) the new keys/values are
    written at `start` and the queries attend over the cache; returns `(h, (k_cache, v_cache))` then."""
    dtype = h.dtype
    dense = lambda x, w: jnp.einsum("btd,df->btf", x, w.astype(dtype))  # noqa: E731
    b, t, _ = h.shape
    x = _rms_norm(h, p["attn_norm"], c.norm_eps, c.norm_offset)
    q, k, v = dense(x, p["q"]), dense(x, p["k"]), dense(x, p["v"])
    if c.qkv_bias:
        q, k, v = q + p["q_bias"].astype(dtype), k + p["k_bias"].astype(dtype), v + p["v_bias"].astype(dtype)
    q = q.reshape(b, t, c.num_heads, c.head_dim)
    k, v = (y.reshape(b, t, c.num_kv_heads, c.head_dim) for y in (k, v))
    if c.qk_norm:
        q = _rms_norm(q, p["q_norm"], c.norm_eps, c.norm_offset)
        k = _rms_norm(k, p["k_norm"], c.norm_eps, c.norm_offset)
    q, k = _rope(q, positions, c.rope_theta), _rope(k, positions, c.rope_theta)
    q, k, v = (checkpoint_name(y, "attn_qkv") for y in (q, k, v))
    if cache is not None:
        k_cache, v_cache, start = cache
        k = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, axis=1)
    context = _attention(q, k, v, mask, 1.0 / math.sqrt(c.head_dim), c.attention_chunk)
    h = h + checkpoint_name(dense(context.reshape(b, t, -1), p["o"]), "attn_out")
    x = _rms_norm(h, p["mlp_norm"], c.norm_eps, c.norm_offset)
    act = jax.nn.silu if c.activation == "silu" else lambda y: jax.nn.gelu(y, approximate=True)
    hidden = checkpoint_name(act(dense(x, p["gate"])) * dense(x, p["up"]), "mlp_hidden")
    h = checkpoint_name(h + dense(hidden, p["down"]), "block_out")
    return h if cache is None else (h, (k, v))


def hidden_states(config: Config, params: dict, inputs, positions, segment_ids):
    """Final hidden states `[B, T, D]` (after the final norm) of packed rows: attention stays inside each
    document (`segment_mask`), positions restart per document."""
    h = _embed(config, params, inputs)
    mask = segment_mask(segment_ids)
    layer = lambda p, h: _layer(config, p, h, positions, mask)  # noqa: E731
    policy = checkpoint_policy(config.remat)
    if policy is not None:
        layer = jax.checkpoint(layer, policy=policy, prevent_cse=False)
    h, _ = jax.lax.scan(lambda h, p: (layer(p, h), None), h, params["layers"])
    return _rms_norm(h, params["final_norm"], config.norm_eps, config.norm_offset)


def _embed(config: Config, params: dict, inputs):
    h = jnp.take(params["embed"], inputs, axis=0).astype(jnp.dtype(config.dtype))
    return h * jnp.asarray(math.sqrt(config.hidden_size), h.dtype) if config.embed_scale else h


def _last_logits(config: Config, params: dict, h):
    embedding, vocab_axis = head(config, params)
    h = _rms_norm(h[:, -1], params["final_norm"], config.norm_eps, config.norm_offset)
    out = jnp.einsum("bd,vd->bv" if vocab_axis == 0 else "bd,dv->bv", h, embedding.astype(h.dtype),
                     preferred_element_type=jnp.float32)
    cap = config.final_logit_softcap
    return out if cap is None else cap * jnp.tanh(out / cap)


def generate_greedy(config: Config, params: dict, prompts, max_new_tokens: int):
    """Greedy continuation of `prompts [B, P]` (no padding) with a KV cache: one prefill over the prompt, then
    one jitted `lax.scan` of single-token decode steps. Returns the new tokens `[B, max_new_tokens]`.
    (STAND-IN for part A's `leanjax.models.generate`: greedy only, equal-length prompts.)"""
    b, prompt_len = prompts.shape
    total = prompt_len + max_new_tokens
    dtype = jnp.dtype(config.dtype)
    shape = (config.num_layers, b, total, config.num_kv_heads, config.head_dim)
    caches = (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    slots = jnp.arange(total)

    def run(h, positions, caches, start):
        t = h.shape[1]
        # Query i (at absolute position start + i) sees cache slots up to its own.
        mask = (slots[None, :] <= (start + jnp.arange(t))[:, None])[None, None]

        def body(h, xs):
            p, k_cache, v_cache = xs
            h, kv = _layer(config, p, h, positions, mask, (k_cache, v_cache, start))
            return h, kv

        return jax.lax.scan(body, h, (params["layers"], *caches))

    positions = jnp.broadcast_to(jnp.arange(prompt_len), (b, prompt_len))
    h, caches = run(_embed(config, params, prompts), positions, caches, 0)
    first = jnp.argmax(_last_logits(config, params, h), -1).astype(jnp.int32)

    def decode(carry, i):
        token, caches = carry
        start = prompt_len + i
        h, caches = run(_embed(config, params, token[:, None]), jnp.full((b, 1), start), caches, start)
        nxt = jnp.argmax(_last_logits(config, params, h), -1).astype(jnp.int32)
        return (nxt, caches), token

    (last, _), tokens = jax.lax.scan(decode, (first, caches), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([tokens.T, last[:, None]], axis=1)


def head(config: Config, params: dict) -> tuple[Any, int]:
    """The output embedding and its vocabulary axis."""
    return (params["embed"], 0) if config.tie_word_embeddings else (params["lm_head"], 1)


def logits(config: Config, params: dict, inputs, positions, segment_ids):
    """f32 logits `[B, T, V]` (soft-capped if the config says so): for tests and generation, not for training."""
    embedding, vocab_axis = head(config, params)
    h = hidden_states(config, params, inputs, positions, segment_ids)
    out = jnp.einsum("btd,vd->btv" if vocab_axis == 0 else "btd,dv->btv", h, embedding.astype(h.dtype),
                     preferred_element_type=jnp.float32)
    cap = config.final_logit_softcap
    return out if cap is None else cap * jnp.tanh(out / cap)


def loss_fn(config: Config, *, chunk_size: int):
    """The packed, assistant-masked, chunked-cross-entropy loss of this model (`_llm.packed_lm_loss`)."""
    def hidden(params, batch):
        return hidden_states(config, params, batch["inputs"], batch["positions"], batch["segment_ids"])
    return _llm.packed_lm_loss(hidden, lambda params: head(config, params), chunk_size=chunk_size,
                               soft_cap=config.final_logit_softcap)


def sized(config: Config, **sizes: int) -> Config:
    """`config` with the nonzero `sizes` replaced (the same family at another size)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(sizes) - fields)
    if unknown:
        raise ValueError(f"unknown model sizes {unknown}: use {sorted(fields)}")
    return dataclasses.replace(config, **{k: v for k, v in sizes.items() if v})


def peft_spec(config: Config, *, batch: int, seq_len: int, rank: int, alpha: float, steps: int) -> dict:
    """The `_peft_bench` JSON for the same Llama-style model and LoRA targets (every projection)."""
    return {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size, "num_layers": config.num_layers,
            "num_heads": config.num_heads, "num_kv_heads": config.num_kv_heads, "head_dim": config.head_dim,
            "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
            "tie_word_embeddings": config.tie_word_embeddings, "batch": batch, "seq_len": seq_len,
            "rank": rank, "alpha": alpha, "steps": steps, "warmup": 2,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}

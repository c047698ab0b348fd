"""Modern open-weight decoder LMs in Flax NNX: Llama 3.x, Qwen 2.5, Qwen 3, Mistral, Gemma 2 and Gemma 3.

One module, driven by `DecoderConfig` (built from a HF `config.json` by `DecoderConfig.from_hf_config`),
follows transformers' reference implementations (`transformers/models/{llama,qwen2,qwen3,mistral,gemma2,
gemma3}/modeling_*.py`; tests/test_decoder.py checks logits and greedy continuations against fixtures made
with those classes by scripts/make_decoder_reference.py):

- RoPE (Su et al. 2021, https://arxiv.org/abs/2104.09864) with llama3 or linear frequency scaling, grouped-
  query attention (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245), RMSNorm, SwiGLU / GeGLU MLPs;
- Qwen 2.5's q/k/v bias, Qwen 3's and Gemma 3's per-head q/k RMSNorm;
- Gemma's (1 + w) norm scale, sqrt(D) embedding scale, pre/post norms around attention and MLP, attention
  and final logit soft-caps (Gemma 2), query_pre_attn_scalar, sliding-window layers among global ones with
  their own rope base (Gemma 3); Mistral's sliding window.

Param tree (kernels `[in, out]`; layer params stacked on a leading axis, the blocks run in one `lax.scan`):

    embed/embedding [V, D]                      lm_head/kernel [D, V] (untied models only)
    layers/{q,k,v}/kernel [L, D, H*hd] (+ bias)  layers/o/kernel [L, H*hd, D]
    layers/{gate,up}/kernel [L, D, F]            layers/down/kernel [L, F, D]
    layers/{attn_norm,mlp_norm}/scale [L, D]     Gemma 2/3: layers/{attn_out_norm,mlp_out_norm}/scale
    layers/{q_norm,k_norm}/scale [L, hd]         final_norm/scale [D]

Per-layer differences (sliding or global, which rope table) are scan inputs, not Python branches.
Activations carry the `checkpoint_name` tags of `leanjax.models.remat` (attn_qkv, attn_out, mlp_hidden,
block_out), so every remat policy applies. Attention goes through `jax.nn.dot_product_attention` (cuDNN
flash attention on GPU) except with an attention soft-cap (Gemma 2), which needs the scores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from leanjax.models.layers import Dense, Embed
from leanjax.models.remat import checkpoint_policy

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text")


@dataclasses.dataclass(frozen=True)
class Rope:
    """One rotary table: base `theta`, and llama3 or linear scaling of its frequencies."""

    theta: float = 10_000.0
    kind: str = "default"            # "default" | "linear" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """The rotary frequencies (as transformers' `_compute_*_parameters` compute them), float64."""
        inv = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        if self.kind == "linear":
            return inv / self.factor
        if self.kind == "llama3":
            old = self.original_max_position_embeddings
            low_wavelen, high_wavelen = old / self.low_freq_factor, old / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
            smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled)
        return inv


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: Rope = Rope()
    local_rope: Rope | None = None        # sliding layers' table when it differs (Gemma 3)
    norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    qkv_bias: bool = False                # Qwen 2.5
    qk_norm: bool = False                 # Qwen 3, Gemma 3
    activation: str = "silu"              # "silu": SwiGLU; "gelu_tanh": GeGLU (Gemma)
    gemma_norms: bool = False             # (1 + w) scales, sqrt(D) embeddings, post-attention/MLP norms
    query_scale: float | None = None      # attention scale (default head_dim ** -0.5)
    attn_softcap: float | None = None     # Gemma 2
    final_softcap: float | None = None    # Gemma 2
    sliding_window: int | None = None     # keys within this many positions (self included)
    sliding_layers: tuple[bool, ...] = ()  # per layer; () = none (or all, for Mistral with a window)
    dtype: str = "float32"                # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: use one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.sliding_layers and len(self.sliding_layers) != self.num_layers:
            raise ValueError(f"sliding_layers has {len(self.sliding_layers)} entries for {self.num_layers} layers")

    @property
    def layer_is_sliding(self) -> tuple[bool, ...]:
        if self.sliding_layers:
            return self.sliding_layers
        return (self.sliding_window is not None,) * self.num_layers

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> DecoderConfig:
        """The config of a HF `config.json` (transformers 4.x `rope_theta`/`rope_scaling` or 5.x
        `rope_parameters`); every missing, unsupported or contradictory key is reported at once."""
        problems: list[str] = []
        family = hf.get("model_type")
        if family not in FAMILIES:
            raise ValueError(f"config.json model_type={family!r} is not a supported decoder: use one of {FAMILIES}")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        problems += [f"missing key {k!r}" for k in required if k not in hf]
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
        if act not in ("silu", "gelu_pytorch_tanh", "gelu"):
            problems.append(f"hidden_act={act!r} is not supported (silu, gelu_pytorch_tanh)")
        gemma = family.startswith("gemma")
        rope, local = _ropes(hf, family, problems)
        layer_types = hf.get("layer_types")
        n = hf.get("num_hidden_layers", 0)
        if layer_types is None and gemma:
            pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 2
            layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
        if layer_types is not None:
            if len(layer_types) != n:
                problems.append(f"layer_types has {len(layer_types)} entries for num_hidden_layers={n}")
            if bad := sorted(set(layer_types) - {"sliding_attention", "full_attention"}):
                problems.append(f"layer_types {bad} are not supported")
        window = hf.get("sliding_window") if (family == "mistral" or layer_types) else None
        if family.startswith("qwen") and hf.get("use_sliding_window"):
            problems.append("use_sliding_window=true (Qwen) is not supported")
        if problems:
            raise ValueError("config.json cannot be used:\n  " + "\n  ".join(problems))
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        scalar = hf.get("query_pre_attn_scalar")
        fields = dict(
            family=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=n, num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim, rope=rope, local_rope=local,
            norm_eps=hf.get("rms_norm_eps", 1e-6), tie_word_embeddings=hf.get("tie_word_embeddings", gemma),
            qkv_bias=family == "qwen2" or bool(hf.get("attention_bias")), qk_norm=family in ("qwen3", "gemma3_text"),
            activation="silu" if act == "silu" else "gelu_tanh", gemma_norms=gemma,
            query_scale=scalar ** -0.5 if scalar else None, attn_softcap=hf.get("attn_logit_softcapping"),
            final_softcap=hf.get("final_logit_softcapping"), sliding_window=window,
            sliding_layers=tuple(t == "sliding_attention" for t in layer_types) if layer_types else ())
        return cls(**{**fields, **overrides})


def _rope_from(params: Mapping[str, Any], theta: float | None, problems: list[str], where: str) -> Rope:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        problems.append(f"{where}: rope_type={kind!r} is not supported (default, linear, llama3)")
        kind = "default"
    theta = params.get("rope_theta", theta)
    if theta is None:
        problems.append(f"{where}: no rope_theta")
        theta = 10_000.0
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return Rope(theta=float(theta), kind=kind, **{k: params[k] for k in keys if k in params and kind != "default"})


def _ropes(hf: Mapping[str, Any], family: str, problems: list[str]) -> tuple[Rope, Rope | None]:
    """(global rope, local rope or None) from either config.json convention."""
    params = hf.get("rope_parameters")
    if params is None:  # transformers 4.x: rope_theta + rope_scaling (+ Gemma 3's rope_local_base_freq)
        rope = _rope_from(hf.get("rope_scaling") or {}, hf.get("rope_theta", 10_000.0), problems, "rope_scaling")
        local = hf.get("rope_local_base_freq")
        return rope, (Rope(theta=float(local)) if local is not None else None)
    if "full_attention" in params or "sliding_attention" in params:  # per layer type (Gemma 3)
        rope = _rope_from(params.get("full_attention", {}), hf.get("rope_theta"), problems, "full_attention")
        local = params.get("sliding_attention")
        return rope, (_rope_from(local, None, problems, "sliding_attention") if local else None)
    return _rope_from(params, hf.get("rope_theta"), problems, "rope_parameters"), None


class RMSNorm(nnx.Module):
    """`x / rms(x) * scale` in float32 (Gemma: `* (1 + scale)`, its stored weights are offsets)."""

    def __init__(self, features: int, *, eps: float, offset: bool, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.zeros((features,), param_dtype) if offset else jnp.ones((features,), param_dtype))
        self.eps, self.offset = eps, offset

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        scale = self.scale.get_value().astype(jnp.float32)
        return (y * (1.0 + scale if self.offset else scale)).astype(x.dtype)


def _rotate(x, positions, inv_freq):
    """RoPE on `x [B, T, heads, hd]` at `positions [B, T]` (transformers' rotate_half convention)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq          # [B, T, hd/2]
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class DecoderLayer(nnx.Module):
    def __init__(self, c: DecoderConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        dense = dict(kernel_init=init, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=rngs)
        d, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.q = Dense(d, q, use_bias=c.qkv_bias, **dense)
        self.k = Dense(d, kv, use_bias=c.qkv_bias, **dense)
        self.v = Dense(d, kv, use_bias=c.qkv_bias, **dense)
        self.o = Dense(q, d, use_bias=False, **dense)
        self.gate = Dense(d, c.intermediate_size, use_bias=False, **dense)
        self.up = Dense(d, c.intermediate_size, use_bias=False, **dense)
        self.down = Dense(c.intermediate_size, d, use_bias=False, **dense)
        norm = dict(eps=c.norm_eps, offset=c.gemma_norms, param_dtype=jnp.dtype(c.param_dtype))
        self.attn_norm, self.mlp_norm = RMSNorm(d, **norm), RMSNorm(d, **norm)
        if c.gemma_norms:
            self.attn_out_norm, self.mlp_out_norm = RMSNorm(d, **norm), RMSNorm(d, **norm)
        if c.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(c.head_dim, **norm), RMSNorm(c.head_dim, **norm)
        self.c = c

    def __call__(self, h, positions, mask, inv_freq, cache=None):
        """One block. `mask [B, 1, T, S]`; with `cache = (k [B, S, KV, hd], v, start)` the new keys and values
        are written at slot `start` and the queries attend over all S slots; returns `(h, (k, v))` then."""
        c = self.c
        b, t, _ = h.shape
        x = self.attn_norm(h)
        q = self.q(x).reshape(b, t, c.num_heads, c.head_dim)
        k = self.k(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = self.v(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = _rotate(q, positions, inv_freq), _rotate(k, positions, inv_freq)
        q, k, v = (checkpoint_name(y, "attn_qkv") for y in (q, k, v))
        if cache is not None:
            k_cache, v_cache, start = cache
            k = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, axis=1)
        scale = c.query_scale if c.query_scale is not None else c.head_dim ** -0.5
        context = _attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, scale, c.attn_softcap)
        out = self.o(context.reshape(b, t, -1))
        if c.gemma_norms:
            out = self.attn_out_norm(out)
        h = h + checkpoint_name(out, "attn_out")
        x = self.mlp_norm(h)
        act = jax.nn.silu if c.activation == "silu" else (lambda y: jax.nn.gelu(y, approximate=True))
        hidden = checkpoint_name(act(self.gate(x)) * self.up(x), "mlp_hidden")
        out = self.down(hidden)
        if c.gemma_norms:
            out = self.mlp_out_norm(out)
        h = checkpoint_name(h + out, "block_out")
        return h if cache is None else (h, (k, v))


def _attention(q, k, v, mask, scale, softcap):
    if softcap is None:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def attention_mask(q_pos, k_pos, q_seg, k_seg, window):
    """`[B, 1, Tq, Tk]`: same segment (0 = padding, never attended), causal by position, and within
    `window` positions (self included) where `window > 0`."""
    same = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] > 0)
    dist = q_pos[:, :, None] - k_pos[:, None, :]
    ok = same & (dist >= 0) & ((window <= 0) | (dist < window))
    return ok[:, None]


def _stack(layers: list[DecoderLayer]) -> DecoderLayer:
    graphdef = nnx.graphdef(layers[0])
    states = [nnx.to_pure_dict(nnx.state(m)) for m in layers]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


class Decoder(nnx.Module):
    """`__call__(input_ids, positions=None, segment_ids=None) -> logits [B, T, V]` (f32, soft-capped);
    `hidden(...)` the final-normed hidden states and `head()` the output embedding for chunked losses.

    `positions` restart per packed document and `segment_ids` keep documents apart (0 = padding); both
    default to one unpadded document per row.
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt = jnp.dtype(config.param_dtype)
        self.embed = Embed(config.vocab_size, config.hidden_size, dtype=jnp.dtype(config.dtype), param_dtype=dt,
                           rngs=rngs)
        self.layers = _stack([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, offset=config.gemma_norms,
                                  param_dtype=dt)
        self.lm_head = None if config.tie_word_embeddings else Dense(
            config.hidden_size, config.vocab_size, use_bias=False, kernel_init=nnx.initializers.normal(0.02),
            dtype=jnp.dtype(config.dtype), param_dtype=dt, rngs=rngs)

    def _layer_inputs(self):
        """Per-layer scan inputs: the window (0 = global) and the rope frequencies."""
        c = self.config
        sliding = np.asarray(c.layer_is_sliding)
        glob = c.rope.inv_freq(c.head_dim)
        local = (c.local_rope or c.rope).inv_freq(c.head_dim)
        freqs = np.where(sliding[:, None], local[None], glob[None]).astype(np.float32)
        windows = np.where(sliding, c.sliding_window or 0, 0).astype(np.int32)
        return jnp.asarray(windows), jnp.asarray(freqs)

    def embed_tokens(self, input_ids):
        h = self.embed(input_ids)
        if self.config.gemma_norms:
            h = h * jnp.asarray(math.sqrt(self.config.hidden_size), h.dtype)
        return h

    def hidden(self, input_ids, positions=None, segment_ids=None):
        c = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        b, t = input_ids.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
        segment_ids = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
        h = self.embed_tokens(input_ids)
        graphdef = nnx.graphdef(self.layers)
        policy = checkpoint_policy(c.remat)

        # One window for every layer (Llama, Qwen, Mistral): the mask is built once, outside the scan, so it is
        # loop-invariant and the backward pass keeps one copy, not one `[B, H, T, S]` broadcast per layer.
        one_window = len(set(c.layer_is_sliding)) == 1
        shared = attention_mask(positions, positions, segment_ids, segment_ids,
                                (c.sliding_window or 0) if c.layer_is_sliding[0] else 0) if one_window else None

        def block(params, h, window, inv_freq):
            mask = shared if one_window else attention_mask(positions, positions, segment_ids, segment_ids, window)
            return nnx.merge(graphdef, params)(h, positions, mask, inv_freq)

        if policy is not None:
            block = jax.checkpoint(block, policy=policy, prevent_cse=False)
        windows, freqs = self._layer_inputs()
        params = nnx.to_pure_dict(nnx.state(self.layers))
        h, _ = jax.lax.scan(lambda h, xs: (block(xs[0], h, xs[1], xs[2]), None), h, (params, windows, freqs))
        return self.final_norm(h)

    def head(self) -> tuple[Any, int]:
        """The output embedding and its vocabulary axis (0: the tied `[V, D]` table, 1: `lm_head [D, V]`)."""
        if self.lm_head is None:
            return self.embed.embedding.get_value(), 0
        return self.lm_head.kernel.get_value(), 1

    def logits(self, h):
        """f32 logits of final hidden states `h [..., D]`, soft-capped where the family does."""
        table, axis = self.head()
        dims = (((h.ndim - 1,), (1 - axis,)), ((), ()))
        out = jax.lax.dot_general(h, table.astype(h.dtype), dims, preferred_element_type=jnp.float32)
        cap = self.config.final_softcap
        return out if cap is None else cap * jnp.tanh(out / cap)

    def __call__(self, input_ids, positions=None, segment_ids=None):
        return self.logits(self.hidden(input_ids, positions, segment_ids))

    def step(self, input_ids, positions, segment_ids, cache, start):
        """Run `input_ids [B, T]` at cache slots `start .. start + T` over the KV `cache` (`init_cache`):
        returns (the last token's logits `[B, V]`, the updated cache). `segment_ids` marks real tokens 1,
        padding 0 (for the new tokens; the cache remembers the earlier ones)."""
        keys, values, slot_pos, slot_seg = cache
        b, t = input_ids.shape
        slot_pos = jax.lax.dynamic_update_slice_in_dim(slot_pos, positions.astype(slot_pos.dtype), start, axis=1)
        slot_seg = jax.lax.dynamic_update_slice_in_dim(slot_seg, segment_ids.astype(slot_seg.dtype), start, axis=1)
        q_seg = jnp.where(segment_ids > 0, 1, -1)  # a padding query attends nowhere real; its output is unused
        written = jnp.arange(slot_pos.shape[1])[None] < start + t
        k_seg = jnp.where(written & (slot_seg > 0), 1, 0)
        graphdef = nnx.graphdef(self.layers)
        h = self.embed_tokens(input_ids)

        def body(h, xs):
            params, window, inv_freq, k_cache, v_cache = xs
            mask = attention_mask(positions, slot_pos, q_seg, k_seg, window)
            h, (k, v) = nnx.merge(graphdef, params)(h, positions, mask, inv_freq, (k_cache, v_cache, start))
            return h, (k, v)

        windows, freqs = self._layer_inputs()
        params = nnx.to_pure_dict(nnx.state(self.layers))
        h, (keys, values) = jax.lax.scan(body, h, (params, windows, freqs, keys, values))
        return self.logits(self.final_norm(h[:, -1])), (keys, values, slot_pos, slot_seg)

    def init_cache(self, batch: int, length: int, dtype=None):
        """An empty KV cache of `length` slots: per-layer keys and values, and each slot's position and
        segment (0: empty or padding)."""
        c = self.config
        dtype = jnp.dtype(dtype or c.dtype)
        shape = (c.num_layers, batch, length, c.num_kv_heads, c.head_dim)
        return (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), jnp.int32),
                jnp.zeros((batch, length), jnp.int32))


def _llama(vocab, d, f, layers, heads, kv, hd, factor, tied):
    return dict(model_type="llama", vocab_size=vocab, hidden_size=d, intermediate_size=f, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, rms_norm_eps=1e-5,
                tie_word_embeddings=tied, rope_theta=500_000.0,
                rope_scaling=dict(rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192))


# The published config.json values (transformers 4.x convention) of the shapes the experiments name.
PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": _llama(128_256, 2048, 8192, 16, 32, 8, 64, 32.0, True),
    "llama-3.2-3b": _llama(128_256, 3072, 8192, 28, 24, 8, 128, 32.0, True),
    "llama-3.1-8b": _llama(128_256, 4096, 14_336, 32, 32, 8, 128, 8.0, False),
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_theta=1e6, tie_word_embeddings=True),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151_936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True),
    "gemma-2-2b": dict(model_type="gemma2", vocab_size=256_000, hidden_size=2304, intermediate_size=9216,
                       num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                       rms_norm_eps=1e-6, rope_theta=10_000.0, hidden_activation="gelu_pytorch_tanh",
                       query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0),
    "gemma-3-1b": dict(model_type="gemma3_text", vocab_size=262_144, hidden_size=1152, intermediate_size=6912,
                       num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                       rms_norm_eps=1e-6, rope_theta=1e6, rope_local_base_freq=10_000.0,
                       hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, sliding_window=512,
                       sliding_window_pattern=6),
    "mistral-7b": dict(model_type="mistral", vocab_size=32_768, hidden_size=4096, intermediate_size=14_336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False, sliding_window=None),
}


def preset(name: str, **overrides) -> DecoderConfig:
    """The `DecoderConfig` of a named open-weight model shape (`PRESETS`), fields replaced by `overrides`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: use one of {sorted(PRESETS)}")
    return DecoderConfig.from_hf_config(PRESETS[name], **overrides)


def resized(config: DecoderConfig, **sizes: int) -> DecoderConfig:
    """The same family at other sizes (the nonzero `sizes` replace fields; a per-layer sliding pattern is
    repeated over the new depth)."""
    fields = {f.name for f in dataclasses.fields(DecoderConfig)}
    if unknown := sorted(set(sizes) - fields):
        raise ValueError(f"unknown model sizes {unknown}: use {sorted(fields)}")
    sizes = {k: v for k, v in sizes.items() if v}
    old = config.sliding_layers
    if old and "num_layers" in sizes:
        sizes["sliding_layers"] = tuple(old[i % len(old)] for i in range(sizes["num_layers"]))
    return dataclasses.replace(config, **sizes)

"""Transformer encoder (BERT layout), causal LM and sequence classifier, in Flax NNX.

The parameter tree mirrors Hugging Face BERT (Devlin et al. 2019, https://arxiv.org/abs/1810.04805;
`transformers/models/bert/modeling_bert.py`), so open-weight checkpoints load with a renaming table
(`leanjax.weights`):

    embeddings/{word,position,token_type}/embedding     embeddings.{word,position,token_type}_embeddings
    embeddings/norm/{scale,bias}                        embeddings.LayerNorm
    layers/{i}/attention/{query,key,value}/{kernel,bias} encoder.layer.{i}.attention.self.*
    layers/{i}/attention/output/{kernel,bias}           encoder.layer.{i}.attention.output.dense
    layers/{i}/attention_norm/{scale,bias}              encoder.layer.{i}.attention.output.LayerNorm
    layers/{i}/intermediate/{kernel,bias}               encoder.layer.{i}.intermediate.dense
    layers/{i}/output/{kernel,bias}                     encoder.layer.{i}.output.dense
    layers/{i}/output_norm/{scale,bias}                 encoder.layer.{i}.output.LayerNorm

Kernels are `[in, out]` (HF stores `[out, in]`). With `scan_layers=True` the per-layer params are stacked
along a leading axis under `layers/...` (no index) and the blocks run in one `jax.lax.scan`, which
compiles one block instead of L and lets `jax.checkpoint` actually bound activation memory (see
ENVIRONMENT.md: remat of unrolled layers saves nothing on XLA CPU). `norm_first=True` gives the pre-LN
GPT-2 arrangement (no embedding LayerNorm, a `final_norm` after the last block) with the same names.

Activations carry `checkpoint_name` tags (`leanjax.models.remat.CHECKPOINT_NAMES`):
`attn_qkv` (query/key/value projections), `attn_scores` (softmax probabilities), `attn_out` (attention
output projection), `mlp_hidden` (activation after the intermediate dense), `block_out` (block output).

Dropout: one key per call, split into an embedding key and one key per layer (the same keys whether the
layers are scanned or unrolled, so both give identical outputs for identical params), and folded per
dropout site inside a block.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from leanjax.models.layers import Dense, Embed, LayerNorm, dropout, fold
from leanjax.models.remat import checkpoint_policy, segment_scan, segment_size, validate_policy_name

ACTIVATIONS = {
    # HF "gelu" is the exact erf form; "gelu_new" / "gelu_pytorch_tanh" are the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture and execution options of `Transformer`, `CausalLM` and `SequenceClassifier`.

    `dtype` is the compute dtype (activations, matmul inputs), `param_dtype` the storage dtype.
    `type_vocab_size=0` drops the token-type embedding (language models). `tie_word_embeddings` is read by
    `CausalLM` only. `remat` is a `leanjax.models.remat` policy name.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    causal: bool = False
    scan_layers: bool = False
    remat: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    hidden_act: str = "gelu"
    norm_first: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        validate_policy_name(self.remat)
        # Accept "bfloat16", np.float32, jnp.bfloat16...: store a numpy dtype (hashable, comparable).
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> TransformerConfig:
        """Config from a Hugging Face `config.json` dict (`model_type` "bert" or "gpt2").

        `overrides` set leanjax-only fields (scan_layers, remat, dtype...) or replace read ones.
        """
        model_type = hf.get("model_type", "bert")
        try:
            if model_type == "bert":
                if hf.get("position_embedding_type", "absolute") != "absolute":
                    raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r} is not "
                                     "supported (absolute only)")
                fields = dict(
                    vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                    num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                    intermediate_size=hf["intermediate_size"],
                    max_position_embeddings=hf["max_position_embeddings"],
                    type_vocab_size=hf.get("type_vocab_size", 2), dropout=hf.get("hidden_dropout_prob", 0.1),
                    layer_norm_eps=hf.get("layer_norm_eps", 1e-12), hidden_act=hf.get("hidden_act", "gelu"))
            elif model_type == "gpt2":
                unsupported = {k: hf[k] for k, ok in (("scale_attn_by_inverse_layer_idx", False),
                                                      ("scale_attn_weights", True), ("add_cross_attention", False))
                               if hf.get(k, ok) != ok}
                if unsupported:
                    raise ValueError(f"GPT-2 options not supported: {unsupported}")
                fields = dict(
                    vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"], num_layers=hf["n_layer"],
                    num_heads=hf["n_head"], intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
                    max_position_embeddings=hf["n_positions"], type_vocab_size=0,
                    dropout=hf.get("resid_pdrop", 0.1), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                    hidden_act=hf.get("activation_function", "gelu_new"), causal=True, norm_first=True,
                    tie_word_embeddings=hf.get("tie_word_embeddings", True))
            else:
                raise ValueError(f"model_type={model_type!r} is not supported; supported: 'bert', 'gpt2'")
        except KeyError as e:
            raise ValueError(f"HF config (model_type={model_type!r}) lacks key {e.args[0]!r}") from None
        return cls(**{**fields, **overrides})


def _split(key: jax.Array | None, n: int = 2):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


class Embeddings(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.word = Embed(cfg.vocab_size, cfg.hidden_size, **kw)
        self.position = Embed(cfg.max_position_embeddings, cfg.hidden_size, **kw)
        self.token_type = Embed(cfg.type_vocab_size, cfg.hidden_size, **kw) if cfg.type_vocab_size else None
        self.norm = None if cfg.norm_first else LayerNorm(
            cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.rate = cfg.dropout

    def __call__(self, input_ids, token_type_ids, key):
        h = self.word(input_ids) + self.position(jnp.arange(input_ids.shape[1]))[None]
        if self.token_type is not None:
            # BERT's default: every token is segment 0.
            h = h + self.token_type(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        if self.norm is not None:
            h = self.norm(h)
        return dropout(h, self.rate, key)


class Attention(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        kw = dict(kernel_init=nnx.initializers.normal(0.02), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  rngs=rngs)
        d = cfg.hidden_size
        self.query, self.key, self.value, self.output = (Dense(d, d, **kw) for _ in range(4))
        self.num_heads = cfg.num_heads
        self.rate = cfg.dropout

    def __call__(self, x, mask, key):
        b, t, d = x.shape

        def heads(y):
            return checkpoint_name(y, "attn_qkv").reshape(b, t, self.num_heads, -1)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
        if mask is not None:
            # `where`, not an additive -inf bias: a fully masked row gives a uniform row, not NaN.
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = checkpoint_name(jax.nn.softmax(scores, axis=-1).astype(v.dtype), "attn_scores")
        probs = dropout(probs, self.rate, key)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, -1)
        return checkpoint_name(self.output(context), "attn_out")


class Block(nnx.Module):
    """One encoder layer: post-LN (BERT) or, with `norm_first`, pre-LN (GPT-2)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        dense = dict(kernel_init=nnx.initializers.normal(0.02), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     rngs=rngs)
        norm = dict(eps=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.attention = Attention(cfg, rngs=rngs)
        self.attention_norm = LayerNorm(cfg.hidden_size, **norm)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size, **dense)
        self.output = Dense(cfg.intermediate_size, cfg.hidden_size, **dense)
        self.output_norm = LayerNorm(cfg.hidden_size, **norm)
        self.norm_first = cfg.norm_first
        self.act = cfg.hidden_act
        self.rate = cfg.dropout

    def _mlp(self, x):
        return self.output(checkpoint_name(ACTIVATIONS[self.act](self.intermediate(x)), "mlp_hidden"))

    def __call__(self, h, mask, key):
        if self.norm_first:
            h = h + dropout(self.attention(self.attention_norm(h), mask, fold(key, 0)), self.rate, fold(key, 1))
            h = h + dropout(self._mlp(self.output_norm(h)), self.rate, fold(key, 2))
        else:
            h = self.attention_norm(h + dropout(self.attention(h, mask, fold(key, 0)), self.rate, fold(key, 1)))
            h = self.output_norm(h + dropout(self._mlp(h), self.rate, fold(key, 2)))
        return checkpoint_name(h, "block_out")


def _stack_blocks(blocks: list[Block]) -> Block:
    """One Block whose params are the blocks' params stacked along a new leading (layer) axis."""
    graphdef = nnx.graphdef(blocks[0])
    states = [nnx.to_pure_dict(nnx.state(b)) for b in blocks]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def _block_fn(graphdef, policy, *, in_scan: bool):
    """`(params, h, mask, key) -> h` for one block, remat-wrapped when a policy is given.

    Going through a pure params dict (rather than `nnx.remat`) keeps one code path for the scanned and
    the unrolled stacks and lets any pytree leaf (e.g. a quax typed weight) flow through the transforms.
    Inside a scan, CSE cannot merge the recompute into the forward pass, so `prevent_cse` (which costs
    optimisation barriers) is only needed for unrolled layers.
    """
    def apply(params, h, mask, key):
        return nnx.merge(graphdef, params)(h, mask, key)
    return apply if policy is None else jax.checkpoint(apply, policy=policy, prevent_cse=not in_scan)


class Transformer(nnx.Module):
    """Encoder stack: `__call__(input_ids, attention_mask=None, token_type_ids=None, *, dropout_rng=None)`
    -> hidden states `[B, T, hidden_size]` in `config.dtype`.

    `input_ids`, `attention_mask` (1 = attend, 0 = padding) and `token_type_ids` are `[B, T]` ints.
    `dropout_rng=None` is deterministic (eval). With `config.causal`, position t attends to <= t only.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        blocks = [Block(config, rngs=rngs) for _ in range(config.num_layers)]
        # Build unrolled then stack, so a scanned model has exactly the unrolled model's init.
        self.layers = _stack_blocks(blocks) if config.scan_layers else nnx.List(blocks)
        self.final_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=config.dtype,
                                    param_dtype=config.param_dtype) if config.norm_first else None

    def _mask(self, attention_mask, t):
        mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
        if self.config.causal:
            causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
            mask = causal if mask is None else mask & causal
        return mask

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, dropout_rng=None):
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        t = input_ids.shape[1]
        if t > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {t} exceeds max_position_embeddings={cfg.max_position_embeddings}")
        embed_key, layers_key = _split(dropout_rng)
        h = self.embeddings(input_ids, token_type_ids, embed_key)
        mask = self._mask(attention_mask, t)
        keys = None if layers_key is None else jax.random.split(layers_key, cfg.num_layers)
        policy = checkpoint_policy(cfg.remat)
        if cfg.scan_layers:
            block = _block_fn(nnx.graphdef(self.layers), policy, in_scan=True)

            def body(h, xs):
                params, key = xs
                return block(params, h, mask, key), None

            xs = (nnx.to_pure_dict(nnx.state(self.layers)), keys)
            k = segment_size(cfg.remat)
            h, _ = jax.lax.scan(body, h, xs) if k is None else segment_scan(body, h, xs, k)
        else:
            for i, layer in enumerate(self.layers):
                block = _block_fn(nnx.graphdef(layer), policy, in_scan=False)
                h = block(nnx.to_pure_dict(nnx.state(layer)), h, mask, None if keys is None else keys[i])
        return h if self.final_norm is None else self.final_norm(h)


class CausalLM(nnx.Module):
    """Decoder-only LM: the `Transformer` stack with `causal=True` forced, then an output head.

    `__call__(input_ids, attention_mask=None, *, dropout_rng=None) -> logits [B, T, vocab_size]` in
    `config.dtype` (losses should upcast). With `config.tie_word_embeddings` (default) the head is the
    word-embedding table (`logits = h @ embedding.T`, no extra params, as GPT-2); otherwise a bias-free
    `lm_head` Dense. Set `type_vocab_size=0` for a plain LM (no token-type embedding).
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        config = dataclasses.replace(config, causal=True)
        self.config = config
        self.transformer = Transformer(config, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else Dense(
            config.hidden_size, config.vocab_size, use_bias=False, kernel_init=nnx.initializers.normal(0.02),
            dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, *, dropout_rng=None):
        h = self.transformer(input_ids, attention_mask, dropout_rng=dropout_rng)
        if self.lm_head is None:
            return self.transformer.embeddings.word.attend(h)
        return self.lm_head(h)


def mean_pool(hidden: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of `hidden [B, T, D]` over the positions where `mask [B, T]` is 1, in float32.

    Same as sentence-transformers' Pooling(mean): the count is clamped at 1e-9 (an all-padding row is 0).
    """
    hidden = hidden.astype(jnp.float32)
    if mask is None:
        return hidden.mean(axis=1)
    m = mask.astype(jnp.float32)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """`x / max(||x||, eps)` over the last axis (torch.nn.functional.normalize)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class SequenceClassifier(nnx.Module):
    """Encoder + masked mean pooling + dropout + linear head (`classifier`).

    `__call__(input_ids, attention_mask=None, token_type_ids=None, *, dropout_rng=None) -> logits
    [B, num_labels]`; `embed(...)` -> the L2-normalised mean-pooled sentence embedding `[B, hidden_size]`
    (sentence-transformers all-MiniLM-L6-v2: Transformer, Pooling(mean), Normalize). The encoder's params
    live under `encoder/`, the head under `classifier/`.
    """

    def __init__(self, config: TransformerConfig, num_labels: int, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Transformer(config, rngs=rngs)
        self.classifier = Dense(config.hidden_size, num_labels, kernel_init=nnx.initializers.normal(0.02),
                                param_dtype=config.param_dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, dropout_rng=None):
        encoder_key, head_key = _split(dropout_rng)
        h = self.encoder(input_ids, attention_mask, token_type_ids, dropout_rng=encoder_key)
        return self.classifier(dropout(mean_pool(h, attention_mask), self.config.dropout, head_key))

    def embed(self, input_ids, attention_mask=None, token_type_ids=None, *, dropout_rng=None):
        h = self.encoder(input_ids, attention_mask, token_type_ids, dropout_rng=dropout_rng)
        return l2_normalize(mean_pool(h, attention_mask))

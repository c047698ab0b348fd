"""Declarative key maps between Hugging Face checkpoint names and leanjax param paths.

A `KeyMap` is data, not code: one `Rule` per tensor family, written as templates where `{i}` is the
layer index. The same table drives import (`load_into`) and export (`export_hf`); a new family (a
GPT-2 or Llama checkpoint) is a new table, not a new loader.

Paths are relative to the `Transformer` inside the model (`leanjax.models.transformer` documents the
layout); the loader adds the prefix of that submodule (`encoder/` in a SequenceClassifier). A template
`layers/{i}/...` also addresses scanned models, whose layer params are stacked along a leading axis at
`layers/...`: the loader writes HF layer `i` into row `i` of the stacked leaf.

Conventions: HF `nn.Linear.weight` is `[out, in]`, so it needs `transpose=True` to become a leanjax
`[in, out]` kernel; GPT-2's `Conv1D` already stores `[in, out]`. A rule with several `paths` is a fused HF
tensor (GPT-2's `c_attn` = query|key|value) split along `split_axis` (in leanjax orientation) on import
and concatenated on export.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cached_property


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF tensor `hf` <-> leanjax leaf(s) `paths`, optionally transposed and/or split."""

    hf: str
    paths: tuple[str, ...]
    transpose: bool = False
    split_axis: int = -1

    def __post_init__(self):
        if isinstance(self.paths, str):
            object.__setattr__(self, "paths", (self.paths,))
        layered = ["{i}" in t for t in (self.hf, *self.paths)]
        if any(layered) and not all(layered):
            raise ValueError(f"rule {self.hf!r}: '{{i}}' must appear in the HF name and every path or in none")

    @cached_property
    def pattern(self) -> re.Pattern:
        return re.compile(re.escape(self.hf).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z")

    @property
    def layered(self) -> bool:
        return "{i}" in self.hf


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """A checkpoint family's naming table.

    `ignore`: regexes of HF keys that hold no leanjax param (buffers such as `position_ids`, heads the
    model does not have); they are skipped on import and not written on export. `strip_prefixes`: HF
    model-class prefixes (`bert.` in BertForSequenceClassification) removed before matching.
    """

    name: str
    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()

    def match(self, hf_key: str) -> tuple[Rule, int | None] | None:
        """The rule matching `hf_key` and its layer index, or None."""
        for rule in self.rules:
            if m := rule.pattern.match(hf_key):
                return rule, (int(m["i"]) if rule.layered else None)
        return None

    def ignored(self, hf_key: str) -> bool:
        return any(re.fullmatch(p, hf_key) for p in self.ignore)

    def strip(self, hf_key: str) -> str:
        for prefix in self.strip_prefixes:
            if hf_key.startswith(prefix):
                return hf_key[len(prefix):]
        return hf_key


def _linear(hf: str, path: str) -> tuple[Rule, Rule]:
    return Rule(f"{hf}.weight", f"{path}/kernel", transpose=True), Rule(f"{hf}.bias", f"{path}/bias")


def _norm(hf: str, path: str, weight: str = "weight", bias: str = "bias") -> tuple[Rule, Rule]:
    return Rule(f"{hf}.{weight}", f"{path}/scale"), Rule(f"{hf}.{bias}", f"{path}/bias")


# transformers/models/bert/modeling_bert.py (BertModel). Also MiniLM and other BERT-architecture models.
BERT = KeyMap(
    name="bert",
    rules=(
        Rule("embeddings.word_embeddings.weight", "embeddings/word/embedding"),
        Rule("embeddings.position_embeddings.weight", "embeddings/position/embedding"),
        Rule("embeddings.token_type_embeddings.weight", "embeddings/token_type/embedding"),
        *_norm("embeddings.LayerNorm", "embeddings/norm"),
        *_linear("encoder.layer.{i}.attention.self.query", "layers/{i}/attention/query"),
        *_linear("encoder.layer.{i}.attention.self.key", "layers/{i}/attention/key"),
        *_linear("encoder.layer.{i}.attention.self.value", "layers/{i}/attention/value"),
        *_linear("encoder.layer.{i}.attention.output.dense", "layers/{i}/attention/output"),
        *_norm("encoder.layer.{i}.attention.output.LayerNorm", "layers/{i}/attention_norm"),
        *_linear("encoder.layer.{i}.intermediate.dense", "layers/{i}/intermediate"),
        *_linear("encoder.layer.{i}.output.dense", "layers/{i}/output"),
        *_norm("encoder.layer.{i}.output.LayerNorm", "layers/{i}/output_norm"),
    ),
    # position_ids is a buffer; the pooler (dense + tanh on [CLS]) is not part of leanjax's encoder
    # (sentence embeddings mean-pool instead), so an exported checkpoint loads with a fresh pooler.
    ignore=(r"embeddings\.position_ids", r"pooler\.dense\.(weight|bias)"),
    strip_prefixes=("bert.",),
)

_QKV = ("query", "key", "value")

# transformers/models/gpt2/modeling_gpt2.py (GPT2Model; GPT2LMHeadModel adds `transformer.` and a tied
# `lm_head.weight`). Conv1D weights are already [in, out]; c_attn fuses query|key|value.
GPT2 = KeyMap(
    name="gpt2",
    rules=(
        Rule("wte.weight", "embeddings/word/embedding"),
        Rule("wpe.weight", "embeddings/position/embedding"),
        *_norm("h.{i}.ln_1", "layers/{i}/attention_norm"),
        Rule("h.{i}.attn.c_attn.weight", tuple(f"layers/{{i}}/attention/{n}/kernel" for n in _QKV)),
        Rule("h.{i}.attn.c_attn.bias", tuple(f"layers/{{i}}/attention/{n}/bias" for n in _QKV)),
        Rule("h.{i}.attn.c_proj.weight", "layers/{i}/attention/output/kernel"),
        Rule("h.{i}.attn.c_proj.bias", "layers/{i}/attention/output/bias"),
        *_norm("h.{i}.ln_2", "layers/{i}/output_norm"),
        Rule("h.{i}.mlp.c_fc.weight", "layers/{i}/intermediate/kernel"),
        Rule("h.{i}.mlp.c_fc.bias", "layers/{i}/intermediate/bias"),
        Rule("h.{i}.mlp.c_proj.weight", "layers/{i}/output/kernel"),
        Rule("h.{i}.mlp.c_proj.bias", "layers/{i}/output/bias"),
        *_norm("ln_f", "final_norm"),
    ),
    # Causal-mask buffers of older checkpoints, and the head tied to wte.
    ignore=(r"h\.\d+\.attn\.(bias|masked_bias)", r"lm_head\.weight"),
    strip_prefixes=("transformer.",),
)


def _decoder(name: str, *, gemma: bool = False) -> KeyMap:
    """transformers' Llama-style `*ForCausalLM` names (`model.layers.{i}.self_attn.q_proj` ...) onto
    `leanjax.models.decoder.Decoder`. Gemma's `post_attention_layernorm` is the attention's output norm and
    `pre_feedforward_layernorm` the MLP's input norm; Llama's `post_attention_layernorm` is the MLP's input
    norm. Rules for tensors a family lacks (biases, q/k norms, an untied head) simply never match."""
    layer = "model.layers.{i}"
    norms = (Rule(f"{layer}.post_attention_layernorm.weight", "layers/{i}/attn_out_norm/scale"),
             Rule(f"{layer}.pre_feedforward_layernorm.weight", "layers/{i}/mlp_norm/scale"),
             Rule(f"{layer}.post_feedforward_layernorm.weight", "layers/{i}/mlp_out_norm/scale")) if gemma else (
             Rule(f"{layer}.post_attention_layernorm.weight", "layers/{i}/mlp_norm/scale"),)
    return KeyMap(
        name=name,
        rules=(
            Rule("model.embed_tokens.weight", "embed/embedding"),
            *(r for n in ("q", "k", "v", "o") for r in _linear(f"{layer}.self_attn.{n}_proj", f"layers/{{i}}/{n}")),
            *(r for n in ("gate", "up", "down") for r in _linear(f"{layer}.mlp.{n}_proj", f"layers/{{i}}/{n}")),
            Rule(f"{layer}.input_layernorm.weight", "layers/{i}/attn_norm/scale"),
            *norms,
            Rule(f"{layer}.self_attn.q_norm.weight", "layers/{i}/q_norm/scale"),
            Rule(f"{layer}.self_attn.k_norm.weight", "layers/{i}/k_norm/scale"),
            Rule("model.norm.weight", "final_norm/scale"),
            Rule("lm_head.weight", "lm_head/kernel", transpose=True),
        ),
        # rotary buffers of older checkpoints; a tied head saved anyway
        ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    )


LLAMA, QWEN2, QWEN3, MISTRAL = (_decoder(n) for n in ("llama", "qwen2", "qwen3", "mistral"))
GEMMA2, GEMMA3 = _decoder("gemma2", gemma=True), _decoder("gemma3_text", gemma=True)
KEY_MAPS = {m.name: m for m in (BERT, GPT2, LLAMA, QWEN2, QWEN3, MISTRAL, GEMMA2, GEMMA3)}


def key_map_for(hf_config: dict) -> KeyMap:
    """The key map for a HF checkpoint family.

    Args:
      hf_config: a HF `config.json` dict.

    Returns:
      The `KeyMap` of its `model_type` (BERT, GPT-2...); unknown types raise, naming the known ones.
    """
    model_type = hf_config.get("model_type")
    if model_type not in KEY_MAPS:
        raise ValueError(f"no key map for model_type={model_type!r}; available: {sorted(KEY_MAPS)}")
    return KEY_MAPS[model_type]

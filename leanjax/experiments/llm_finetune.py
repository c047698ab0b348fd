"""Experiment `llm_finetune`: an open-weight decoder instruction-tuned by full fine-tuning, LoRA, QLoRA, QLoRA+remat.

Arms (`leanjax.experiments._llm`): `full` (f32 params, f32 AdamW: the conventional baseline), `lora` (rank-r
adapters over a frozen bf16 base, bf16 activations), `qlora` (the adapters over an NF4 base) and
`qlora_remat` (plus `remat_policy` inside the layer scan). All use the chunked vocabulary cross-entropy on
packed chats, loss on assistant tokens only (`leanjax.data.chat`).

- Memory: the compiled train step's peak, compiled only from abstract shapes, at the `model` preset (batch
  `memory_batch` x `memory_seq_len`) and QLoRA+remat at `memory_8b_model` (`memory_8b_batch` x
  `memory_8b_seq_len`).
- Training, step time and tokens/s: the same family at the `train_model` sizes (random init unless
  `weights`), on the shipped tweets chat example; step times alternate between arms (medians).
- `peft_speed_ratio`: leanjax LoRA steps/s over HF PEFT's on the same tiny Llama config, PEFT in a
  subprocess of `peft_python` (`_peft_bench`); None, labelled, when that interpreter has no torch.
- `packing_efficiency`: real-token fraction of the packed rows. `generate_tokens_per_s`: greedy decoding with a
  KV cache (`leanjax.models.generate`). `max_logit_diff`: the worst family's largest |logit - transformers'
  logit| on the reference fixtures (`reference_dir`, made by scripts/make_decoder_reference.py).
  `load_peak_ratio`: peak host memory over the checkpoint's bytes while loading a random `load_peak` checkpoint
  (index + bf16 shards) in a fresh process (`leanjax.weights.load_peak`); NF4-on-load beside it in metrics.
The decoder is `leanjax.models.decoder.Decoder` (Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from leanjax import data, transforms
from leanjax.audit.timing import time_interleaved
from leanjax.experiments import _launch, _llm, _llm_bench, _llm_model
from leanjax.experiments._build import Build
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import fit
from leanjax.weights.decoders import load_decoder

GIB = 2**30


def arm_setup(config, base: _llm_model.Config, arm: str):
    """`(model config, arm_params kwargs, micro-batches)` of one arm on the `base` model."""
    remat = {"lora": config.lora_remat_policy, "qlora_remat": config.remat_policy}.get(arm, "none")
    model = dataclasses.replace(base, dtype="float32" if arm == "full" else config.compute_dtype, remat=remat)
    kw = dict(kernels=_llm_model.KERNELS, rank=config.lora_rank, alpha=config.lora_alpha,
              group_size=config.qlora_group_size, key=jax.random.key(config.seed + 1),
              quantize_rows=None if base.tie_word_embeddings else "embed/embedding")
    return model, kw, config.qlora_remat_micro_batches if arm == "qlora_remat" else 1


def memory(config) -> dict[str, dict]:
    """Compiled peaks of every arm at the `model` preset, side rows, and QLoRA+remat at `memory_8b_model`."""
    tx = _launch.config_optimizer(config)
    big = (config.memory_batch, config.memory_seq_len)
    rows = [(arm, config.model, arm, big, {}) for arm in _llm.ARMS]
    if config.memory_side_rows:  # what the levers of the headline arms are worth
        rows += [("lora_no_remat", config.model, "lora", big, {"lora_remat_policy": "none"}),
                 ("qlora_remat_one_batch", config.model, "qlora_remat", big, {"qlora_remat_micro_batches": 1})]
    rows.append(("qlora_remat_8b", config.memory_8b_model, "qlora_remat",
                 (config.memory_8b_batch, config.memory_8b_seq_len),
                 {"qlora_remat_micro_batches": math.gcd(config.qlora_remat_micro_batches, config.memory_8b_batch)}))
    out = {}
    for name, preset, arm, shape, overrides in rows:
        arm_config = ml_collections.ConfigDict({**config.to_dict(), **overrides})
        model, kw, micro = arm_setup(arm_config, _llm_model.preset(preset), arm)
        params = jax.eval_shape(lambda m=model, a=arm, kw=kw: _llm.arm_params(
            _llm_model.init_params(m, jax.random.key(0)), a, **kw))
        start = time.perf_counter()
        mem = _llm.compiled_peak(_llm_model.loss_fn(model, chunk_size=config.loss_chunk), params,
                                 _llm.trainable_mask(params, arm), tx, _llm.abstract_batch(*shape),
                                 micro_batches=micro)
        out[name] = {"peak_bytes": mem.peak, "arguments": mem.arguments, "temporaries": mem.temporaries,
                     "outputs": mem.outputs, "aliased": mem.aliased, "model": preset, "shape": list(shape),
                     "remat": model.remat, "dtype": model.dtype, "micro_batches": micro,
                     "compile_s": time.perf_counter() - start}
        print(f"[llm_finetune] memory {name} ({preset}, {shape[0]}x{shape[1]}): {mem.peak / GIB:.2f} GiB", flush=True)
    return out


def check(config) -> None:
    """Bad presets and remat policies as one-line config errors, before anything is compiled."""
    from leanjax.models.remat import validate_policy_name

    for key in ("model", "memory_8b_model"):
        if config[key] not in _llm_model.PRESETS:
            raise _launch.ConfigError(f"config.{key}={config[key]!r}: use one of {sorted(_llm_model.PRESETS)}")
    for key in ("remat_policy", "lora_remat_policy"):
        try:
            validate_policy_name(config[key])
        except ValueError as e:
            raise _launch.ConfigError(f"config.{key}: {e}") from None
    if config.memory_batch % config.qlora_remat_micro_batches or config.batch_size % config.qlora_remat_micro_batches:
        raise _launch.ConfigError(f"config.qlora_remat_micro_batches={config.qlora_remat_micro_batches} must divide "
                                  f"memory_batch={config.memory_batch} and batch_size={config.batch_size}")


def train_config(config, tokenizer) -> tuple[_llm_model.Config, dict | None]:
    """The training model's config, and its loaded params with `weights` (else None: random init)."""
    if config.weights:
        try:
            loaded = load_decoder(config.weights)
        except (FileNotFoundError, ValueError) as e:
            raise _launch.ConfigError(f"config.weights={config.weights!r}: {e}") from None
        vocab = tokenizer.tokenizer.get_vocab_size()
        if vocab > loaded.config.vocab_size:
            raise _launch.ConfigError(
                f"config.weights={config.weights!r} has a {loaded.config.vocab_size}-token vocabulary but the "
                f"tokenizer ({config.tokenizer or 'the shipped example'}) has {vocab}: set config.tokenizer to the "
                "checkpoint's own tokenizer")
        return loaded.config, nnx.to_pure_dict(nnx.state(loaded.model))
    sizes = dict(config.train_model)
    sizes["vocab_size"] = sizes.get("vocab_size") or tokenizer.tokenizer.get_vocab_size()
    return _llm_model.sized(_llm_model.preset(config.model), **sizes), None


def build(config):
    """The full fine-tune of the training model on the packed chats (what `--audit` compiles)."""
    check(config)
    packed, tokenizer, _ = _llm.packed_data(config)
    base, loaded = train_config(config, tokenizer)
    model, _, _ = arm_setup(config, base, "full")
    return Build(params=loaded if loaded is not None else _llm_model.init_params(model, jax.random.key(config.seed)),
                 loss=_llm_model.loss_fn(model, chunk_size=config.loss_chunk), tx=_launch.config_optimizer(config),
                 seed=config.seed, batch_size=config.batch_size, num_steps=config.num_steps,
                 train=data.ArraySource(packed.batch(slice(None))))


def run(config, workdir):
    check(config)
    packed, tokenizer, data_stats = _llm.packed_data(config)
    base, loaded = train_config(config, tokenizer)
    peaks = memory(config)
    source = data.ArraySource(packed.batch(slice(None)))
    results, steps, states = {}, {}, {}
    init = loaded if loaded is not None else _llm_model.init_params(base, jax.random.key(config.seed))
    for arm in _llm.ARMS:
        model, kw, micro = arm_setup(config, base, arm)
        params = _llm.arm_params(init, arm, **kw)
        mask = _llm.trainable_mask(params, arm)
        rate = config.learning_rate if arm == "full" else config.lora_learning_rate
        tx = _launch.config_optimizer(config, learning_rate=rate)
        state = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(config.seed), trainable=mask)
        steps[arm] = make_train_step(transforms.apply(_llm_model.loss_fn(model, chunk_size=config.loss_chunk)), tx,
                                     trainable=mask, grad_accum_steps=micro)
        results[arm] = fit(state, steps[arm], data.batches(source, batch_size=config.batch_size, seed=config.seed),
                           num_steps=config.num_steps, workdir=os.path.join(workdir, arm), log_every=config.log_every,
                           progress=config.progress, desc=f"llm_finetune/{arm}")
        if results[arm].preempted:
            return {"preempted": True}, {}
        states[arm] = results[arm].state
    batch = packed.batch(slice(0, config.batch_size))
    step_s = time_interleaved({arm: (steps[arm], (states[arm], batch)) for arm in _llm.ARMS},
                              repeats=config.timing_rounds)
    tokens = int((batch["segment_ids"] > 0).sum())
    peft_ratio, peft = _llm_bench.peft_comparison(config, base)
    generation = _llm_bench.generation_speed(config, arm_setup(config, base, "full")[0], states["full"].params, packed)
    full = peaks["full"]["peak_bytes"]
    diffs = _llm_bench.reference_logit_diffs(config)
    loading = _llm_bench.load_peak(config, workdir)
    headline = {
        "lora.memory_ratio": peaks["lora"]["peak_bytes"] / full,
        "qlora_remat.memory_ratio": peaks["qlora_remat"]["peak_bytes"] / full,
        "qlora_remat_8b.peak_gib": peaks["qlora_remat_8b"]["peak_bytes"] / GIB,
        "load_peak_ratio": loading["bf16"]["load_peak_ratio"] if loading else None,
        "max_logit_diff": max(diffs.values()) if diffs else None,
        "generate_tokens_per_s": generation["tokens_per_s"],
        "packing_efficiency": data_stats["packing_efficiency"],
        "peft_speed_ratio": peft_ratio,
    }
    metrics = {
        "init": "random" if not config.weights else f"weights: {config.weights}",
        "memory": peaks, "memory_ratio": {k: v["peak_bytes"] / full for k, v in peaks.items()},
        "memory_gib": {k: v["peak_bytes"] / GIB for k, v in peaks.items()},
        "train_model": dataclasses.asdict(base), "logit_diff_vs_transformers": diffs, "step_time_s": step_s,
        "tokens_per_step": tokens,
        "tokens_per_s": {arm: tokens / s for arm, s in step_s.items()},
        "final_loss": {arm: r.history[-1]["loss"] if r.history else None for arm, r in results.items()},
        "loss_curves": {arm: [[row["step"], row["loss"]] for row in r.history if "loss" in row]
                        for arm, r in results.items()},
        "data": data_stats,
        "peft": peft,
        "generation": generation,
        "load_peak": loading,
        "not_measured": {"mfu": "not measured: no GPU lent"},
    }
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("llm_finetune", run))

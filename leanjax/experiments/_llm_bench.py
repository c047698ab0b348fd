"""The side measurements of `llm_finetune`: leanjax LoRA vs HF PEFT step time, KV-cache generation speed,
the host-memory peak of loading a sharded checkpoint, and the decoder's logits against transformers' fixtures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from leanjax import transforms
from leanjax.audit.timing import Timing, time_step
from leanjax.experiments import _launch, _llm, _llm_model
from leanjax.models.generate import generate
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.weights.decoders import load_decoder
from leanjax.weights.load_peak import measure_load_peak, write_random_decoder

GIB = 2**30


def peft_steps_per_s(python: str, spec: dict) -> dict | None:
    """HF PEFT's LoRA step timed by `_peft_bench` on `spec` under the interpreter `python`: its JSON result, or
    None when `python` is empty, missing, or lacks torch/transformers/peft."""
    if not python or not os.path.exists(python):
        return None
    bench = Path(__file__).with_name("_peft_bench.py")
    out = subprocess.run([python, str(bench), json.dumps(spec)], capture_output=True, text=True, timeout=900)
    if out.returncode:
        if "No module named" in out.stderr:
            return None
        raise RuntimeError(f"{bench} failed under {python}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def leanjax_lora_step_s(config, model: _llm_model.Config) -> Timing:
    """Seconds per step (`peft_steps` calls after a warm-up) of leanjax's LoRA step as PEFT runs it: f32, every
    projection adapted, unpacked random rows."""
    model = dataclasses.replace(model, dtype="float32", remat="none")
    params = _llm.arm_params(_llm_model.init_params(model, jax.random.key(config.seed)), "lora",
                             kernels=_llm_model.KERNELS, rank=config.lora_rank, alpha=config.lora_alpha,
                             group_size=config.qlora_group_size, key=jax.random.key(1), base_dtype=jnp.float32)
    mask = _llm.trainable_mask(params, "lora")
    tx = _launch.config_optimizer(config, learning_rate=config.lora_learning_rate)
    state = TrainState.create(params, tx, jax.random.key(0), trainable=mask)
    step = make_train_step(transforms.apply(_llm_model.loss_fn(model, chunk_size=config.loss_chunk)), tx,
                           trainable=mask)
    b, t = config.batch_size, config.seq_len
    ids = np.random.default_rng(0).integers(0, model.vocab_size, (b, t + 1)).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((b, t), bool),
             "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)), "segment_ids": np.ones((b, t), np.int32)}
    return time_step(step, state, batch, warmup=1, iters=config.peft_steps)


def peft_comparison(config, base: _llm_model.Config) -> tuple[float | None, dict]:
    """`(peft_speed_ratio, details)`: PEFT timed before and after leanjax (this machine is shared, so each
    side's best step time is compared; medians are kept in the details). None when PEFT is unavailable."""
    spec = _llm_model.peft_spec(base, batch=config.batch_size, seq_len=config.seq_len, rank=config.lora_rank,
                                alpha=config.lora_alpha, steps=config.peft_steps)
    before = peft_steps_per_s(config.peft_python, spec)
    if before is None:
        return None, {"skipped": f"no torch/transformers/peft at config.peft_python={config.peft_python!r}"}
    ours = leanjax_lora_step_s(config, base)
    after = peft_steps_per_s(config.peft_python, spec)
    peft_best = min(before["best_step_s"], after["best_step_s"])
    details = {"peft_before": before, "peft_after": after, "leanjax_median_step_s": ours.median_s,
               "peft_best_step_s": peft_best, "leanjax_best_step_s": ours.min_s,
               "median_ratio": statistics.median([before["step_s"], after["step_s"]]) / ours.median_s}
    return peft_best / ours.min_s, details


def generation_speed(config, model: _llm_model.Config, params, packed) -> dict:
    """Greedy KV-cache generation tokens/s of the full fine-tune's final params (f32), second call timed."""
    prompts = packed.inputs[:config.generate_batch, :config.generate_prompt_len].tolist()
    decoder = _llm_model.model(dataclasses.replace(model, remat="none"), params)
    generate(decoder, prompts, max_new_tokens=config.generate_tokens)
    start = time.perf_counter()
    tokens = generate(decoder, prompts, max_new_tokens=config.generate_tokens)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens.size / seconds, "seconds": seconds, "batch": len(prompts),
            "prompt_len": config.generate_prompt_len, "new_tokens": config.generate_tokens, "dtype": model.dtype,
            "decoder": "leanjax.models.generate (greedy, KV cache)"}


def load_peak(config, workdir) -> dict | None:
    """Peak host memory of loading a random `load_peak` checkpoint (index + shards, bf16 as released ones are)
    in a fresh process: as stored (bf16 params) and quantized to NF4 on load. The checkpoint is deleted after."""
    lp = config.load_peak
    if not lp.enabled:
        return None
    hf = dict(model_type="llama", vocab_size=lp.vocab_size, hidden_size=lp.hidden_size,
              intermediate_size=lp.intermediate_size, num_hidden_layers=lp.num_layers, num_attention_heads=32,
              num_key_value_heads=8, head_dim=lp.hidden_size // 32, rms_norm_eps=1e-5, rope_theta=5e5,
              tie_word_embeddings=False)
    directory = Path(workdir) / "load_peak_checkpoint"
    try:
        write_random_decoder(directory, hf, shards=lp.shards)
        out = {"bf16": measure_load_peak(directory, dtype="bfloat16"),
               "nf4_on_load": measure_load_peak(directory, dtype="bfloat16", quantize="nf4"), "config": hf}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    gib = out["bf16"]["checkpoint_bytes"] / GIB
    print(f"[llm_finetune] load peak ({gib:.2f} GiB, {lp.shards} shards): bf16 {out['bf16']['load_peak_ratio']:.3f}, "
          f"NF4 on load {out['nf4_on_load']['load_peak_ratio']:.3f}", flush=True)
    return out


def reference_logit_diffs(config) -> dict[str, float] | None:
    """Largest |logit - transformers' logit| of each family's fixture in `reference_dir` (None if absent)."""
    root = Path(config.reference_dir)
    if not config.reference_dir or not root.is_dir():
        return None
    diffs = {}
    for family in sorted(p.name for p in root.iterdir() if (p / "reference.npz").is_file()):
        ref = np.load(root / family / "reference.npz")
        got = load_decoder(root / family).model(jnp.asarray(ref["input_ids"]))
        diffs[family] = float(np.abs(np.asarray(got) - ref["logits"]).max())
    return diffs

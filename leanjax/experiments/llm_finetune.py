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
- `packing_efficiency`, `generate_tokens_per_s`, `load_peak_ratio`, `max_logit_diff`: see `_llm_extras`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from leanjax import data
from leanjax.data import chat
from leanjax.experiments import _launch, _llm, _llm_model
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import fit
from leanjax import transforms

EXAMPLE = Path(chat.__file__).parent / "chat_example"
GIB = 2**30


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


def memory(config) -> dict[str, dict]:
    """Compiled peaks (bytes) of every arm at the `model` preset, and QLoRA+remat at `memory_8b_model`."""
    tx = _launch.config_optimizer(config)
    rows = {}
    shapes = [(arm, config.model, config.memory_batch, config.memory_seq_len) for arm in _llm.ARMS]
    shapes.append(("qlora_remat_8b", config.memory_8b_model, config.memory_8b_batch, config.memory_8b_seq_len))
    for name, preset, batch, seq_len in shapes:
        arm = name.removesuffix("_8b")
        spec = _llm_model.arm_spec(_llm_model.preset(preset), arm, config)
        params = jax.eval_shape(lambda p, s=spec: _llm.arm_params(p, s.arm, **s.arm_kw), spec.abstract_params)
        start = time.perf_counter()
        mem = _llm.compiled_peak(spec.loss, params, _llm.trainable_mask(params, spec.arm), tx,
                                 _llm.abstract_batch(batch, seq_len))
        rows[name] = {"peak_bytes": mem.peak, "arguments": mem.arguments, "temporaries": mem.temporaries,
                      "outputs": mem.outputs, "aliased": mem.aliased, "model": preset, "shape": [batch, seq_len],
                      "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(spec.abstract_params)),
                      "compile_s": time.perf_counter() - start}
        print(f"[llm_finetune] memory {name} ({preset}, {batch}x{seq_len}): {mem.peak / GIB:.2f} GiB", flush=True)
    return rows


def peft_steps_per_s(config, spec) -> dict | None:
    """HF PEFT's LoRA steps/s on `spec` (a `_peft_bench` JSON), or None when `peft_python` lacks torch."""
    python = config.peft_python
    if not python or not os.path.exists(python):
        return None
    bench = Path(__file__).with_name("_peft_bench.py")
    out = subprocess.run([python, str(bench), json.dumps(spec)], capture_output=True, text=True, timeout=900)
    if out.returncode:
        if "No module named" in out.stderr:
            return None
        raise RuntimeError(f"{bench} failed under {python}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(config, workdir):
    packed, tokenizer, data_stats = packed_data(config)
    peaks = memory(config)
    model = _llm_model.train_model(config, vocab_size=tokenizer.tokenizer.get_vocab_size())
    source = data.ArraySource(packed.batch(slice(None)))
    results, steps, states = {}, {}, {}
    for arm in _llm.ARMS:
        spec = _llm_model.arm_spec(model, arm, config)
        params = _llm.arm_params(model.params, arm, **spec.arm_kw)
        mask = _llm.trainable_mask(params, arm)
        rate = config.learning_rate if arm == "full" else config.lora_learning_rate
        tx = _launch.config_optimizer(config, learning_rate=rate)
        state = TrainState.create(jax.tree.map(jnp.copy, params), tx, jax.random.key(config.seed), trainable=mask)
        steps[arm] = make_train_step(transforms.apply(spec.loss), tx, trainable=mask)
        results[arm] = fit(state, steps[arm], data.batches(source, batch_size=config.batch_size, seed=config.seed),
                           num_steps=config.num_steps, workdir=os.path.join(workdir, arm), log_every=config.log_every,
                           progress=config.progress, desc=f"llm_finetune/{arm}")
        if results[arm].preempted:
            return {"preempted": True}, {}
        states[arm] = results[arm].state
    batch = packed.batch(slice(0, config.batch_size))
    step_s = _llm.alternating_step_times({arm: (steps[arm], states[arm]) for arm in _llm.ARMS}, batch,
                                         config.timing_rounds)
    tokens = int((batch["segment_ids"] > 0).sum())
    extras = _llm_model.extras(config, model, states["lora"].params, tokenizer, workdir)
    peft = peft_steps_per_s(config, _llm_model.peft_spec(model, config))
    peft_ratio = None if peft is None else (1.0 / step_s["lora"]) / peft["steps_per_s"]
    full = peaks["full"]["peak_bytes"]
    headline = {
        "lora.memory_ratio": peaks["lora"]["peak_bytes"] / full,
        "qlora_remat.memory_ratio": peaks["qlora_remat"]["peak_bytes"] / full,
        "qlora_remat_8b.peak_gib": peaks["qlora_remat_8b"]["peak_bytes"] / GIB,
        "load_peak_ratio": extras["load_peak_ratio"],
        "max_logit_diff": extras["max_logit_diff"],
        "generate_tokens_per_s": extras["generate_tokens_per_s"],
        "packing_efficiency": data_stats["packing_efficiency"],
        "peft_speed_ratio": peft_ratio,
    }
    metrics = {
        "init": "random" if not config.weights else f"weights: {config.weights}",
        "memory": peaks, "memory_ratio": {k: v["peak_bytes"] / full for k, v in peaks.items()},
        "train_model": dataclasses.asdict(model.config) if dataclasses.is_dataclass(model.config) else str(model.config),
        "step_time_s": step_s, "tokens_per_step": tokens,
        "tokens_per_s": {arm: tokens / s for arm, s in step_s.items()},
        "final_loss": {arm: r.history[-1]["loss"] if r.history else None for arm, r in results.items()},
        "loss_curves": {arm: [[row["step"], row["loss"]] for row in r.history if "loss" in row]
                        for arm, r in results.items()},
        "data": data_stats, "peft": peft if peft is not None else "skipped: no torch/peft at config.peft_python",
        "extras": extras, "mfu": "not measured: no GPU lent",
    }
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("llm_finetune", run))

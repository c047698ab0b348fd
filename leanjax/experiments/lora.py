"""Experiment `lora`: MiniLM fine-tuned on tweet sentiment by full fine-tuning, LoRA and QLoRA.

Three arms train the same `SequenceClassifier` (all-MiniLM-L6-v2 with a 3-way head, layers in one
`lax.scan`) from the same start, on the same batches, for the same number of steps:
- `full`: every weight trains (AdamW).
- `lora`: rank-r adapters (Hu et al. 2021, https://arxiv.org/abs/2106.09685) on every encoder kernel over a
  frozen f32 base; embeddings, norms and biases frozen; the head trains.
- `qlora`: the same adapters over an NF4 base (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314):
  encoder kernels and the word/position embeddings quantized to NF4 in blocks (`leanjax.transforms`).

Memory is the compiled train step's `memory_analysis()` peak (arguments + outputs + temporaries - aliased,
deterministic on CPU) at `memory_batch` x `memory_seq_len` with AdamW, compiled only, for each arm with
and without remat (`remat='nothing'` inside the layer scan). Step times are medians at the training
shape, calls alternating between arms. Accuracy: each arm's final evaluation on a random subset of the
test split. `--audit` reports the full fine-tune's train and serving steps (`build`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from leanjax import data, losses, transforms
from leanjax.audit import interventions, time_interleaved
from leanjax.experiments import _launch, _minilm
from leanjax.experiments._build import Build
from leanjax.experiments._minilm import ADAPTER_ARMS as ARMS
from leanjax.experiments._minilm import INPUTS, apply_fn_for, minilm, tweets
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit
from leanjax.trees import count_params


def build(config):
    """The full fine-tune's params, loss, metrics and data (what `--audit` compiles)."""
    model_config, params, tokenizer = minilm(config, scan_layers=True)
    apply_fn = apply_fn_for(model_config)
    train = data.text_classification_source(tweets("train", config.train_examples, config.seed), tokenizer,
                                            config.seq_len)
    evaluation = data.text_classification_source(tweets("test", config.eval_examples, seed=0), tokenizer,
                                                 config.seq_len)
    return Build(params=params, loss=losses.classification_loss(apply_fn, inputs=INPUTS),
                 metrics=losses.classification_metrics(apply_fn, inputs=INPUTS), train=train, eval=evaluation,
                 tx=_launch.config_optimizer(config), seed=config.seed, batch_size=config.batch_size,
                 eval_batch_size=config.eval_batch_size, num_steps=config.num_steps,
                 extra={"model_config": model_config})


def memory_peaks(config, model_config, params_by_arm) -> dict[str, int]:
    """Compiled train-step peak bytes of every arm without remat and of `config.remat_arms` with it, at the
    memory shape."""
    shape = (config.memory_batch, config.memory_seq_len)
    if config.memory_seq_len > model_config.max_position_embeddings:
        raise _launch.ConfigError(f"config.memory_seq_len={config.memory_seq_len} > MiniLM's "
                                  f"{model_config.max_position_embeddings} positions")
    batch = {"input_ids": jnp.zeros(shape, jnp.int32), "attention_mask": jnp.ones(shape, bool),
             "label": jnp.zeros(shape[:1], jnp.int32)}
    peaks = {}
    for remat in ("none", config.remat_policy):
        apply_fn = apply_fn_for(model_config, remat=remat)
        subject = interventions.Subject(
            params=params_by_arm["full"], loss=losses.classification_loss(apply_fn, inputs=INPUTS),
            serve=losses.classification_metrics(apply_fn, inputs=INPUTS),
            tx=_launch.config_optimizer(config),  # the rate does not change the memory
            train_batch=batch, serve_batch=batch, seed=config.seed)
        for arm, params in params_by_arm.items():
            if remat != "none" and arm not in config.remat_arms:
                continue
            name = arm if remat == "none" else f"{arm}_remat"
            # The audit freezes plain arrays of the adapter arms, the 3-way head included (1,155 params).
            audit = interventions.audit_train(subject, name, params, freeze_plain=arm != "full", iters=0)
            peaks[name] = audit.memory.peak
            print(f"[lora] memory {name}: {audit.memory.peak / 2**20:.1f} MiB", flush=True)
    return peaks


def run(config, workdir):
    parts = build(config)
    params_by_arm, masks = {}, {}
    for arm in ARMS:
        params_by_arm[arm], masks[arm] = _minilm.arm_params(parts.params, arm, rank=config.lora_rank,
                                                    alpha=config.lora_alpha, group_size=config.qlora_group_size,
                                                    seed=config.seed)
    peaks = memory_peaks(config, parts.extra["model_config"], params_by_arm)

    eval_step = make_eval_step(transforms.apply(parts.metrics))
    loss = transforms.apply(parts.loss)
    learning_rates = {"full": config.learning_rate, "lora": config.lora_learning_rate,
                      "qlora": config.lora_learning_rate}
    results, steps = {}, {}
    for arm in ARMS:
        tx = _launch.config_optimizer(config, learning_rate=learning_rates[arm])
        # A copy: the step donates its state, and the arms share their frozen and plain arrays.
        start = jax.tree.map(jnp.copy, params_by_arm[arm])
        state = TrainState.create(start, tx, jax.random.key(config.seed), trainable=masks[arm])
        steps[arm] = make_train_step(loss, tx, trainable=masks[arm])
        results[arm] = fit(
            state, steps[arm], data.batches(parts.train, batch_size=config.batch_size, seed=config.seed),
            num_steps=config.num_steps, workdir=os.path.join(workdir, arm),
            eval_fn=lambda p: evaluate(eval_step, p, data.eval_batches(parts.eval, config.eval_batch_size)),
            eval_every=config.eval_every, checkpoint_every=config.checkpoint_every, log_every=config.log_every,
            progress=config.progress, desc=f"lora/{arm}")
        if results[arm].preempted:
            return {"preempted": True}, {}

    batch = next(iter(data.batches(parts.train, batch_size=config.batch_size, seed=config.seed + 1)))
    # Calls alternate between arms; each gets a copy of its state (the step donates it).
    step_s = time_interleaved({arm: (steps[arm], (results[arm].state, batch)) for arm in ARMS},
                              repeats=config.timing_rounds)
    accuracy = {arm: results[arm].last_eval["accuracy"] for arm in ARMS}
    n_params = count_params(parts.params)
    trainable = {arm: sum(int(np.size(x)) for x, m in zip(jax.tree.leaves(params_by_arm[arm]),
                                                          jax.tree.leaves(masks[arm])) if m)
                 for arm in ARMS}
    headline = {
        "full.accuracy": accuracy["full"], "lora.accuracy": accuracy["lora"], "qlora.accuracy": accuracy["qlora"],
        "lora.trainable_fraction": trainable["lora"] / n_params,
        "lora.memory_ratio": peaks["lora"] / peaks["full"],
        "qlora.memory_ratio": peaks["qlora"] / peaks["full"],
        "qlora_remat.memory_ratio": peaks["qlora_remat"] / peaks["full"],
        "lora.step_time_ratio": step_s["lora"] / step_s["full"],
        "qlora.step_time_ratio": step_s["qlora"] / step_s["full"],
    }
    metrics = {
        "memory_peak_bytes": peaks,
        "memory_ratio": {name: peak / peaks["full"] for name, peak in peaks.items()},
        "memory_shape": [config.memory_batch, config.memory_seq_len],
        "step_time_s": step_s, "train_shape": [config.batch_size, config.seq_len],
        "accuracy": accuracy, "final_eval": {arm: r.last_eval for arm, r in results.items()},
        "eval_curves": {arm: [[row["step"], row["eval_accuracy"]] for row in r.history if "eval_accuracy" in row]
                        for arm, r in results.items()},
        "trainable_params": trainable, "params": n_params,
        "weight_bytes": {arm: transforms.weight_bytes(p) for arm, p in params_by_arm.items()},
        "steps_per_s": {arm: r.steps_per_s for arm, r in results.items()},
        "train_examples": len(parts.train), "eval_examples": len(parts.eval),
    }
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("lora", run))

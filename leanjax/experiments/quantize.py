"""Experiment `quantize`: post-training int8 and int4 of MiniLM fine-tuned on tweet sentiment, vs Qwix.

MiniLM (unrolled layers, 3-way head) is fine-tuned once (`fit`, cached in `<workdir>/finetune`: rerunning
with the same workdir resumes and trains nothing), then served in these arms, all on the same weights:
- `f32`: the fine-tuned model.
- `int8`: every kernel int8 per output channel and the word/position embeddings int8 per row, kernels
  served as W8A8 (`leanjax.transforms.serve_int8`: dynamic per-row int8 activations, int8 x int8 -> int32
  dots; LLM.int8() arXiv:2208.07339 / SmoothQuant arXiv:2211.10438 without outliers or smoothing).
- `int4`: the same with int4 in blocks of `int4_group_size` (W4A8: int4 codes, int8 activations).
- `int8_weight_only`, `int4_weight_only`: the same storage, matmuls dequantizing the weight (metrics only).
- `qwix_int8`: Qwix (PyPI `qwix`) on the same model: every kernel quantized with `qwix.quantize` (int8,
  per channel) and every matmul run by `qwix.dot_general` on activations quantized per row by
  `qwix.quantize`. `qwix.quantize_model`'s NNX path cannot be used: it stores the quantized weight on the
  module it intercepts, and leanjax's blocks are rebuilt from a params dict inside the trace
  (flax TraceContextError). Without qwix installed its figures are NaN with the reason in metrics.

Regime arms (issue 19), on the same f32 and int8 weights:
- `int8_sweep`: int8 (W8A8) throughput vs f32 at each `(batch, seq)` of `serve_shapes`
  (`leanjax.audit.int8_serving.shape_sweep`): where int8 serving wins, and where f32 attention dilutes it.
- `int8_split`: one W8A8 layer (MiniLM's intermediate kernel at `eval_batch_size` x `seq_len` rows) split
  into activation quantization, the int8 dot and the output rescale (`w8a8_split`): where W8A8 time goes.

Size: `weight_bytes` vs f32. Accuracy: on a random subset of the test split. Throughput: inference
examples/s of one `eval_batch_size` x `seq_len` batch vs f32, timed alternately in this process.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import quax
from jax import lax
from jaxtyping import ArrayLike

from leanjax import data, losses, transforms
from leanjax.audit.int8_serving import shape_sweep, w8a8_split
from leanjax.experiments import _launch
from leanjax.experiments._build import Build
from leanjax.experiments._minilm import INPUTS, KERNELS, apply_fn_for, minilm, quantized, throughput_ratios, tweets
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit
from leanjax.transforms.select import select
from leanjax.transforms.typed import TypedWeight, frozen


class QwixInt8(TypedWeight):
    """A kernel held as a Qwix `QArray` (int8, per output channel); matmuls run through `qwix.dot_general`."""

    q: Any

    def aval(self):
        return jax.core.ShapedArray(self.q.qvalue.shape, self.q.scale.dtype)

    def materialise(self):
        import qwix

        return qwix.dequantize(self.q)

    @property
    def stack_ndim(self) -> int:
        return 0

    def trainable_mask(self):
        return frozen(self)


@quax.register(lax.dot_general_p)
def _qwix_dot(lhs: ArrayLike, rhs: QwixInt8, *, dimension_numbers, **params):
    import qwix

    (lhs_contract, _), _ = dimension_numbers
    # One scale per row: every axis but the contracted ones is channelwise (Qwix's dynamic act scheme).
    rows = [d for d in range(lhs.ndim) if d not in lhs_contract]
    x = qwix.quantize(lhs, jnp.int8, channelwise_axes=rows)
    return qwix.dot_general(x, rhs.q, dimension_numbers).astype(lhs.dtype)


def qwix_int8(params):
    """`(params with QwixInt8 kernels, None)`, or `(None, reason)` when qwix is not installed."""
    try:
        import qwix
    except ImportError:
        return None, "qwix is not installed (`pip install qwix==0.1.8`, the bench extra)"
    quantize = jax.jit(lambda w: qwix.quantize(w, jnp.int8, channelwise_axes=[1]))
    return select(params, KERNELS, lambda _, w: QwixInt8(quantize(w))), None


def _model(config):
    """`(apply_fn, params, train, eval)`: MiniLM (unrolled layers) before fine-tuning, and the tweets."""
    model_config, params, tokenizer = minilm(config, scan_layers=False)
    train = data.text_classification_source(tweets("train", config.train_examples, config.seed), tokenizer,
                                            config.seq_len)
    evaluation = data.text_classification_source(tweets("test", config.eval_examples, seed=0), tokenizer,
                                                 config.seq_len)
    return apply_fn_for(model_config), params, train, evaluation


def build(config):
    """What `--audit` compiles: the fine-tuning train step, the f32 serving step, and beside it the int8
    and int4 (W8A8 / W4A8) serving steps on the same (not yet fine-tuned) weights."""
    apply_fn, params, train, evaluation = _model(config)
    metrics = losses.classification_metrics(apply_fn, inputs=INPUTS)
    arms = {"int8": quantized(params, 8, None, serve=True),
            "int4": quantized(params, 4, config.int4_group_size, serve=True)}
    return Build(params=params, loss=losses.classification_loss(apply_fn, inputs=INPUTS), metrics=metrics,
                 tx=_launch.config_optimizer(config), train=train, eval=evaluation, seed=config.seed,
                 batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, num_steps=config.num_steps,
                 serve_arms={arm: (metrics, p) for arm, p in arms.items()})


def finetune(config, workdir):
    """`(apply_fn, fine-tuned params, eval source)`, the fine-tune cached in `workdir`."""
    apply_fn, params, train, evaluation = _model(config)
    tx = _launch.config_optimizer(config)
    step = make_train_step(losses.classification_loss(apply_fn, inputs=INPUTS), tx)
    result = fit(TrainState.create(params, tx, jax.random.key(config.seed)), step,
                 data.batches(train, batch_size=config.batch_size, seed=config.seed), num_steps=config.num_steps,
                 workdir=os.path.join(workdir, "finetune"), log_every=config.log_every, progress=config.progress,
                 desc="quantize/finetune")
    return apply_fn, result, evaluation


def regime(config, serve, f32, int8):
    """`(shape sweep, one-layer split)`: int8 vs f32 throughput per `serve_shapes`, and where a W8A8
    layer's time goes (MiniLM's first intermediate kernel at `eval_batch_size` x `seq_len` rows)."""

    def inputs(batch, seq):
        ids = jax.random.randint(jax.random.key(batch * 1000 + seq), (batch, seq), 0, 1000)
        return ids, jnp.ones((batch, seq), bool)

    sweep = shape_sweep({"f32": (serve, f32), "int8": (serve, int8)}, inputs,
                        [tuple(s) for s in config.serve_shapes], rounds=config.timing_rounds)
    kernel = f32["encoder"]["layers"][0]["intermediate"]["kernel"]
    x = jax.random.normal(jax.random.key(0), (config.eval_batch_size * config.seq_len, kernel.shape[0]))
    return sweep, w8a8_split(x, kernel, rounds=config.timing_rounds)


def run(config, workdir):
    apply_fn, result, evaluation = finetune(config, workdir)
    if result.preempted:
        return {"preempted": True}, {}
    f32 = result.state.params
    arms = {"f32": f32,
            "int8": quantized(f32, 8, None, serve=True),
            "int4": quantized(f32, 4, config.int4_group_size, serve=True),
            "int8_weight_only": quantized(f32, 8, None, serve=False),
            "int4_weight_only": quantized(f32, 4, config.int4_group_size, serve=False)}
    qwix_params, qwix_missing = qwix_int8(f32)
    if qwix_params is not None:
        arms["qwix_int8"] = qwix_params

    eval_step = make_eval_step(transforms.apply(losses.classification_metrics(apply_fn, inputs=INPUTS)))
    accuracy = {arm: evaluate(eval_step, p, data.eval_batches(evaluation, config.eval_batch_size))["accuracy"]
                for arm, p in arms.items()}
    batch = next(iter(data.eval_batches(evaluation, config.eval_batch_size)))
    serve = transforms.apply(lambda p, ids, mask: apply_fn(p, ids, mask))
    throughput = throughput_ratios({arm: (serve, p) for arm, p in arms.items()},
                                   (batch["input_ids"], batch["attention_mask"]), rounds=config.timing_rounds)
    sweep, split = regime(config, serve, f32, arms["int8"])
    size = {arm: transforms.weight_bytes(p) for arm, p in arms.items() if not arm.startswith("qwix")}
    nan = math.nan
    headline = {
        "int8.size_ratio": size["int8"] / size["f32"], "int4.size_ratio": size["int4"] / size["f32"],
        "int8.accuracy_delta": accuracy["int8"] - accuracy["f32"],
        "int4.accuracy_delta": accuracy["int4"] - accuracy["f32"],
        "int8.throughput_ratio": throughput["int8"], "int4.throughput_ratio": throughput["int4"],
        "qwix_int8.accuracy_delta": accuracy["qwix_int8"] - accuracy["f32"] if qwix_params else nan,
        "qwix_int8.throughput_ratio": throughput.get("qwix_int8", nan),
        "int8_sweep.best_throughput_ratio": max(r["int8"] for r in sweep.values()),
        "int8_sweep.worst_throughput_ratio": min(r["int8"] for r in sweep.values()),
        "int8_split.int8_dot_speedup": split["int8_dot_speedup"],
        "int8_split.layer_speedup": split["layer_speedup"],
        "int8_split.quantize_share": split["quantize_activations"] / split["w8a8_layer"],
        "int8_split.rescale_share": split["rescale_outputs"] / split["w8a8_layer"],
    }
    metrics = {"accuracy": accuracy, "throughput_ratio": throughput, "weight_bytes": size,
               "serve_shape": [config.eval_batch_size, config.seq_len], "eval_examples": len(evaluation),
               "int8_sweep": sweep, "int8_split_s": split,
               "finetune_steps_per_s": result.steps_per_s, "int4_group_size": config.int4_group_size}
    if qwix_missing:
        metrics["qwix"] = qwix_missing
    else:
        import qwix

        metrics["qwix"] = f"qwix {qwix.__version__}: qwix.quantize + qwix.dot_general, int8 per channel / per row"
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("quantize", run))

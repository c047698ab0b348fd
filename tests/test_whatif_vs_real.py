"""Each checked what-if row against the real thing: the experiment's own implementation of the intervention,
compiled and run for two steps, has the compiled memory and FLOPs the row predicted, within 10%."""

import jax
import pytest

from leanjax import transforms
from leanjax.audit import audit_compiled, interventions
from leanjax.experiments import _audit, _baseline, _launch, _minilm, lora
from leanjax.state import TrainState
from leanjax.step import make_train_step


def _real(step, state, batch):
    """The experiment's step: two real steps, then its compiled program audited."""
    for _ in range(2):
        state, metrics = step(jax.tree.map(jax.numpy.copy, state), batch)
    assert jax.numpy.isfinite(metrics["loss"])
    return audit_compiled(step, state, batch, name="real", iters=0)


def _close(predicted, real, what):
    errors = {"memory": abs(predicted.memory.peak / real.memory.peak - 1),
              "flops": abs(predicted.flops / real.flops - 1)}
    print(f"{what}: predicted/real peak {predicted.memory.peak}/{real.memory.peak}, FLOPs {predicted.flops:.4g}/"
          f"{real.flops:.4g}: errors {errors}")
    assert max(errors.values()) <= 0.10, (what, errors)
    return max(errors.values())


@pytest.mark.slow  # MiniLM at :tiny, five compilations: ~1 min
def test_rows_predict_the_experiments_own_interventions(data_dir):
    worst = []
    # baseline: gradient accumulation, as its `grad_accum_steps` option trains.
    config = _launch.load_config("configs/baseline/default.py:tiny")
    subject = _audit.subject(config, _baseline.build)
    predicted = interventions.grad_accumulation(subject, 2, iters=0)
    parts = _baseline.build(config)
    tx = _launch.config_optimizer(config)
    state = TrainState.create(parts.params, tx, jax.random.key(config.seed))
    real = _real(make_train_step(parts.loss, tx, grad_accum_steps=2), state, subject.train_batch)
    worst.append(_close(predicted, real, "baseline grad accumulation x2"))

    # lora: the LoRA and QLoRA rows against the lora experiment's own arms (its targets, head trainable).
    config = _launch.load_config("configs/lora/default.py:tiny")
    subject = _audit.subject(config, lora.build)
    for arm, row in (("lora", interventions.lora), ("qlora", interventions.qlora)):
        predicted = row(subject, rank=config.lora_rank, iters=0)
        params, mask = _minilm.arm_params(subject.params, arm, rank=config.lora_rank, alpha=config.lora_alpha,
                                          group_size=config.qlora_group_size, seed=config.seed)
        state = TrainState.create(params, subject.tx, jax.random.key(config.seed), trainable=mask)
        step = make_train_step(transforms.apply(subject.loss), subject.tx, trainable=mask)
        worst.append(_close(predicted, _real(step, state, subject.train_batch), f"lora experiment: {arm}"))
    print(f"worst prediction error: {max(worst):.3%}")

"""Optimizers: AdamW/Adafactor/SGD with warmup + cosine/constant schedules, clipping, and injectable
hyperparameters.

Adafactor (Shazeer & Stern 2018, https://arxiv.org/abs/1804.04235) is the memory-lean choice: no first
moment, and the second moment of an `[m, n]` matrix factored into `m + n` numbers, so its state is a few
percent of Adam's `2mn`. Here its rate is absolute (no scaling by each parameter's RMS), so a rate tuned
for Adam is a sensible start.

Hyperparameters are wrapped in `optax.inject_hyperparams`, so the learning rate and weight decay live in
the optimizer state: a tuner can vmap a population of them through one XLA program, and a schedule
change never needs a recompile.
"""

from __future__ import annotations

import optax


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                           schedule: str = "cosine", end_fraction: float = 0.0) -> optax.Schedule:
    if schedule == "constant":
        decay = optax.constant_schedule(learning_rate)
    elif schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1),
                                            alpha=end_fraction)
    elif schedule == "linear":
        decay = optax.linear_schedule(learning_rate, learning_rate * end_fraction,
                                      max(total_steps - warmup_steps, 1))
    else:
        raise ValueError(f"unknown schedule {schedule!r}: use 'cosine', 'linear' or 'constant'")
    if warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(name: str = "adamw", *, learning_rate: float = 1e-3, total_steps: int = 1000,
                   warmup_steps: int = 0, schedule: str = "cosine", weight_decay: float = 0.0,
                   clip_norm: float | None = 1.0, b1: float = 0.9, b2: float = 0.999,
                   momentum: float = 0.9) -> optax.GradientTransformation:
    """`name` is 'adamw', 'adam', 'adafactor' or 'sgd'. The peak learning rate and weight decay are
    injectable."""
    lr_fn = learning_rate_schedule(learning_rate, total_steps, warmup_steps, schedule)

    def build(learning_rate_scale, weight_decay):
        lr = lambda count: lr_fn(count) * learning_rate_scale  # noqa: E731
        if name == "adamw":
            core = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
        elif name == "adam":
            core = optax.adam(lr, b1=b1, b2=b2)
        elif name == "adafactor":
            core = optax.adafactor(lr, multiply_by_parameter_scale=False, weight_decay_rate=weight_decay)
        elif name == "sgd":
            core = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))
        else:
            raise ValueError(f"unknown optimizer {name!r}: use 'adamw', 'adam', 'adafactor' or 'sgd'")
        return optax.chain(optax.clip_by_global_norm(clip_norm), core) if clip_norm else core

    return optax.inject_hyperparams(build)(learning_rate_scale=1.0, weight_decay=weight_decay)

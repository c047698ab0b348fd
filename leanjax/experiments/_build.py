"""`Build`: what an experiment's `build(config)` returns, typed.

`build(config)` is the one place an experiment turns its config into a model, its loss, optimizer and data;
its own `run` starts from it, and `--audit` (`leanjax.experiments._audit`) compiles its train and serving
steps from it without training. Every value the audit needs is a field here, so nothing falls back to
reading the config: an experiment shaped differently (a distillation pair, a sharded batch, several served
arms) says so in the fields, and a missing piece fails when the `Build` is made, naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import optax


@dataclasses.dataclass(frozen=True)
class Build:
    """An experiment's model, loss, optimizer and data.

    Attributes:
      params: the initial params (a pytree; typed weights allowed).
      loss: `loss(params, batch, rng) -> (loss, metrics)`.
      tx: the optimizer the run trains with.
      seed: the run's seed (params init, batch order).
      batch_size: the training batch size.
      num_steps: the run's training steps (what a run's $ is priced at).
      train: the training data source (`leanjax.data`), or None when `train_batch` is given.
      eval: the evaluation source (the audit's serving batch comes from it; None: from `train`).
      eval_batch_size: the evaluation batch size (None: `batch_size`).
      metrics: `metrics(params, batch) -> dict`, the serving step (None: the loss without dropout).
      serve_params: the params served (None: `params`; e.g. a distillation's student).
      train_batch: one training batch, for experiments that make their own batches (e.g. sharded).
      serve_batch: one serving batch (None: drawn from `eval`, else `train_batch`).
      trainable: the train step's trainable mask (None: every array; e.g. a distillation's teacher is frozen).
      serve_arms: `{name: (metrics, params)}`, more serving steps audited beside the model's own (the int8
        model of `quantize`, the teacher of `distill`).
      extra: what the experiment's own `run` needs beside these (e.g. its model config, a vocabulary).
    """

    params: Any
    loss: Callable
    tx: optax.GradientTransformation
    seed: int
    batch_size: int
    num_steps: int
    train: Any = None
    eval: Any = None
    eval_batch_size: int | None = None
    metrics: Callable | None = None
    serve_params: Any = None
    train_batch: Any = None
    serve_batch: Any = None
    trainable: Any = None
    serve_arms: Mapping[str, tuple[Callable, Any]] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.train is None and self.train_batch is None:
            raise ValueError("Build: give `train` (a data source) or `train_batch` (one batch)")
        for name in ("batch_size", "num_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Build: {name} must be a positive int, got {value!r}")
        if not callable(self.loss):
            raise TypeError(f"Build: loss must be callable, got {type(self.loss).__name__}")

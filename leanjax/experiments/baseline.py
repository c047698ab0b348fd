"""Experiment `baseline`: the brute-force reference, trained from scratch.

The MNIST-5k CNN (default) or the Shakespeare causal LM (`--config.task=lm`), trained with the canonical
loop: full precision, every weight trainable, synchronous evaluation. Later experiments compare against
it. Headline: `eval_accuracy` (CNN) or `eval_loss` (LM), `steps_per_s`, `compile_s`, `params`.

`--config.data_parallel=true` runs the same training data-parallel over every device of every process
(one `data` mesh axis, params replicated, each process reading its own rows of each global batch): the path
a TPU pod or a SLURM job takes, checked on one machine with `python -m leanjax.parallel.launch
--processes 2 --devices-per-process 4 -- python -m leanjax.experiments.baseline ... --config.data_parallel=true`.
"""

from __future__ import annotations

import itertools

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from leanjax import data
from leanjax.experiments import _launch
from leanjax.experiments._baseline import build
from leanjax.parallel import multihost
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.train import fit, plot_curves
from leanjax.trees import count_params


def data_parallel(config, parts, tx):
    """State, train step, train batches and eval-batch placement sharded over every device of every process."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    if config.batch_size % jax.device_count():
        raise _launch.ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                                  f"{jax.device_count()} devices of a data-parallel run")
    state = multihost.replicate(TrainState.create(parts.params, tx, jax.random.key(config.seed)), replicated)
    train_step = make_train_step(parts.loss, tx, grad_accum_steps=config.grad_accum_steps,
                                 in_shardings=(replicated, rows), out_shardings=(replicated, replicated))
    local = multihost.process_batches(parts.train, global_batch_size=config.batch_size, seed=config.seed)
    return state, train_step, multihost.GlobalBatches(local, rows), lambda b: multihost.global_batch(b, replicated)


def run(config, workdir):
    parts = build(config)
    tx = parts.tx
    if config.data_parallel:
        state, train_step, train_iter, place = data_parallel(config, parts, tx)
    else:
        state = TrainState.create(parts.params, tx, jax.random.key(config.seed))
        train_step = make_train_step(parts.loss, tx, grad_accum_steps=config.grad_accum_steps)
        train_iter = data.batches(parts.train, batch_size=config.batch_size, seed=config.seed)
        place = None
    eval_step = make_eval_step(parts.metrics)

    def eval_fn(params):
        batches = itertools.islice(data.eval_batches(parts.eval, config.eval_batch_size),
                                   config.eval_max_batches or None)
        return evaluate(eval_step, params, map(place, batches) if place else batches)

    result = fit(state, train_step, train_iter, num_steps=config.num_steps, workdir=workdir, eval_fn=eval_fn,
                 eval_every=config.eval_every,
                 checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
                 log_every=config.log_every, progress=config.progress, desc=f"baseline/{config.task}")
    if result.preempted:
        return {"preempted": True}, {}
    if multihost.is_primary():
        plot_curves(workdir, title=f"baseline ({config.task})")
    final = result.last_eval
    headline = {"steps_per_s": result.steps_per_s, "compile_s": result.compile_s,
                "params": count_params(parts.params)}
    if config.task == "cnn":
        headline = {"eval_accuracy": final["accuracy"], **headline}
    else:
        headline = {"eval_loss": final["loss"], **headline}
    metrics = {"final_eval": final, "resumed_from_step": result.start_step,
               "final_train_loss": next((r["loss"] for r in reversed(result.history) if "loss" in r), None)}
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("baseline", run))

"""Experiment `parallel`: does the auto mesh planner pick the mesh an exhaustive measurement would?

A small Transformer LM on Shakespeare (char-level) is sharded over every factorisation of the devices
into (`data`, `fsdp`, `tensor`) with leanjax's logical-axis rules and the shard_map vocab-parallel loss.
The planner compiles each candidate ahead of time, ranks by memory fit and estimated step time (FLOPs,
bytes, collective bytes and count from the compiled HLO), and times only its top few. The exhaustive
baseline times every candidate (alternating rounds, median). Then the planner's mesh trains for a few
steps on real batches.

Headline: `planner.mesh`, `planner.step_time_s` (the planner's mesh, timed in the exhaustive sweep),
`best.mesh`, `best.step_time_s`, `planner_regret` (planner / best - 1), `planner.memory_per_device`.

On CPU the module asks XLA for 8 host devices before jax is imported (the flag only touches the host
CPU backend, so it is harmless where accelerators exist).
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from leanjax import data, losses  # noqa: E402
from leanjax.experiments import _launch  # noqa: E402
from leanjax.experiments._build import Build
from leanjax.models import CausalLM, TransformerConfig, functional  # noqa: E402
from leanjax.parallel import (  # noqa: E402
    agree,
    decide,
    fingerprint,
    make_mesh,
    measure,
    save_plan,
    shard,
    sharded_lm_loss,
    sharded_train_step,
    spec_str,
    survey,
)
from leanjax.state import TrainState  # noqa: E402
from leanjax.step import make_train_step  # noqa: E402
from leanjax.train import MetricWriter  # noqa: E402
from leanjax.trees import count_params  # noqa: E402


def build_problem(config):
    lm = config.lm
    source = data.lm_source("shakespeare", "train", seq_len=lm.seq_len, tokenizer="char")
    model = CausalLM(TransformerConfig(
        vocab_size=source.vocab_size, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
        num_heads=lm.num_heads, intermediate_size=lm.intermediate_size, max_position_embeddings=lm.seq_len,
        type_vocab_size=0, dropout=0.0, causal=True, scan_layers=lm.scan_layers), rngs=nnx.Rngs(config.seed))
    apply_fn, params = functional(model)
    tx = _launch.config_optimizer(config, num_steps=max(config.train_steps, 1))
    state = TrainState.create(params, tx, jax.random.key(config.seed))
    batches = data.batches(source, batch_size=config.batch_size, seed=config.seed)
    return apply_fn, tx, state, batches


def build(config):
    """What `--audit` compiles: the LM's train and evaluation steps, unsharded (`run` compiles the step for
    every candidate mesh and reports each one's cost itself)."""
    apply_fn, tx, state, batches = build_problem(config)
    return Build(params=state.params, loss=losses.lm_loss(apply_fn), metrics=losses.lm_metrics(apply_fn), tx=tx,
                 train_batch=next(batches), num_steps=max(config.train_steps, 1), seed=config.seed,
                 batch_size=config.batch_size)


def run(config, workdir):
    if config.devices and jax.process_count() > 1:
        raise _launch.ConfigError(f"config.devices={config.devices} would leave some of the {jax.process_count()} "
                                  "processes without a device: use 0 (every device) in a multi-process run")
    devices = jax.devices()[:config.devices] if config.devices else jax.devices()
    apply_fn, tx, state, batches = build_problem(config)
    batch = next(batches)

    steps = {}

    def compiled_for(mesh):
        """The step sharded over `mesh`, built once per mesh: training on the chosen mesh reuses the
        compilation its survey made."""
        if mesh not in steps:
            loss = sharded_lm_loss(apply_fn, mesh) if config.vocab_parallel_loss else losses.lm_loss(apply_fn)
            steps[mesh] = sharded_train_step(functools.partial(make_train_step, loss, tx), state, batch, mesh)
        return steps[mesh]

    def build(mesh):
        step, state_sh, batch_sh = compiled_for(mesh)
        return step, (shard(state, state_sh), shard(batch, batch_sh))

    axes = tuple(config.axes)
    t0 = time.perf_counter()
    surveyed = survey(build, devices, axes=axes)
    survey_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = decide(surveyed, measure_top=config.planner.measure_top, steps=config.planner.steps,
                  rounds=config.planner.rounds)
    planner_s = survey_s + time.perf_counter() - t0
    print(f"[parallel] planner: {len(surveyed)} candidates on {len(devices)} devices\n{plan.table()}\n"
          f"[parallel] {plan.reason}", flush=True)
    cache_path = os.path.join(workdir, "mesh_plans.json")
    save_plan(cache_path, fingerprint(config.lm.to_json(), (state, batch), devices, axes), plan)

    # The exhaustive baseline: every candidate that compiled, timed the same way.
    ok = [(c, prog) for c, prog in surveyed if c.compiled]
    t0 = time.perf_counter()
    times = agree(np.asarray(measure([prog for _, prog in ok], steps=config.exhaustive.steps,
                                     rounds=config.exhaustive.rounds))).tolist()
    exhaustive_s = time.perf_counter() - t0
    sweep = {spec_str(c.mesh): t for (c, _), t in zip(ok, times)}
    best = min(sweep, key=sweep.get)
    chosen = spec_str(plan.mesh)
    del surveyed, ok

    # Train on the chosen mesh: real batches, the state sharded by the rules.
    mesh = make_mesh(plan.mesh, devices)
    step, state_sh, batch_sh = compiled_for(mesh)
    train_state = shard(state, state_sh)
    writer = MetricWriter(workdir)
    losses_seen = []
    for i in range(config.train_steps):
        train_state, metrics = step(train_state, shard(next(batches), batch_sh))
        loss = float(metrics["loss"])
        losses_seen.append(loss)
        writer.write(i + 1, {"loss": loss})
    writer.close()

    chosen_candidate = plan.chosen
    headline = {
        "planner.mesh": chosen,
        "planner.step_time_s": sweep[chosen],
        "best.mesh": best,
        "best.step_time_s": sweep[best],
        "planner_regret": sweep[chosen] / sweep[best] - 1.0,
        "planner.memory_per_device": chosen_candidate.memory_per_device,
    }
    metrics = {
        "devices": len(devices), "axes": list(axes), "params": count_params(state.params),
        "planner_wall_s": planner_s, "survey_s": survey_s, "exhaustive_wall_s": exhaustive_s,
        "exhaustive_step_time_s": sweep, "plan": plan.to_dict(), "plan_table": plan.table().splitlines(),
        "train_losses": losses_seen,
    }
    return metrics, headline


if __name__ == "__main__":
    raise SystemExit(_launch.main("parallel", run))

"""Parallelism: meshes, logical-axis sharding rules, hand-written collectives, the auto mesh planner and
multi-host setup.

    mesh = make_mesh("data=-1,tensor=2")                      # or choose_mesh("auto", build)
    step, state_sh, batch_sh = sharded_train_step(partial(make_train_step, loss_fn, tx), state, batch, mesh)
    state = shard(state, state_sh)
"""

from leanjax.parallel.collectives import sharded_lm_loss, vocab_parallel_cross_entropy
from leanjax.parallel.mesh import AXES, factorizations, make_mesh, parse_spec, resolve_shape, spec_str
from leanjax.parallel.multihost import (
    GlobalBatches,
    agree,
    cluster_kind,
    global_batch,
    initialize,
    initialize_kwargs,
    is_primary,
    place,
    process_batches,
    process_dir,
    replicate,
)
from leanjax.parallel.planner import (
    Candidate,
    Hardware,
    Plan,
    choose_mesh,
    decide,
    fingerprint,
    measure,
    plan_mesh,
    save_plan,
    survey,
)
from leanjax.parallel.sharding import (
    AXIS_RULES,
    PARAM_RULES,
    batch_sharding,
    describe,
    logical_axes,
    partition_spec,
    shard,
    sharded_train_step,
    tree_shardings,
)

__all__ = [
    "AXES", "AXIS_RULES", "PARAM_RULES", "Candidate", "GlobalBatches", "Hardware", "Plan", "agree", "batch_sharding",
    "choose_mesh", "is_primary", "place", "process_dir", "replicate",
    "cluster_kind", "decide", "describe", "factorizations", "fingerprint", "global_batch", "initialize",
    "initialize_kwargs", "logical_axes", "make_mesh", "measure", "parse_spec", "partition_spec", "plan_mesh",
    "process_batches", "resolve_shape", "save_plan", "shard", "sharded_lm_loss", "sharded_train_step", "spec_str",
    "survey", "tree_shardings", "vocab_parallel_cross_entropy",
]

"""Multi-host runs: `jax.distributed` from the environment, a data pipeline sharded by process, and
global batches assembled from each process's rows.

`initialize()` recognises a Cloud TPU VM slice or pod (the TPU runtime's environment), a SLURM job with
more than one task (GPU clusters), and an explicit coordinator (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`); a single process needs nothing and stays single.

Checkpoints need nothing extra: `leanjax.train.Checkpointer` hands global `jax.Array`s to orbax, which
writes each process's shards and lets the primary process commit, on every host at once. Files that are
not checkpoints (metrics, summaries, plots) are the primary process's; the others write theirs under
`process_dir(workdir)`, so no two processes append to one file.

The data order does not depend on the number of processes: global batch k is rows [kB, (k+1)B) of one
shuffled stream whichever processes read it, so a run on 2 processes x 4 devices trains on exactly the
batches of a run on 1 process x 8 devices (`tests/test_multiprocess.py` checks that they end equal).
`python -m leanjax.parallel.launch` starts such a run on one machine (loopback, CPU collectives).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def cluster_kind(env: Mapping[str, str]) -> str | None:
    """'explicit', 'slurm', 'tpu' or None (a single process), from environment variables."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if env.get("TPU_WORKER_ID") is not None and len([h for h in hosts.split(",") if h]) > 1:
        return "tpu"
    return None


def initialize_kwargs(env: Mapping[str, str]) -> dict[str, Any] | None:
    """Arguments for `jax.distributed.initialize`, or None for a single process.

    SLURM and Cloud TPU are detected by jax's own cluster plugins, so they need no arguments; the
    explicit form passes the coordinator, the process count and this process's id.
    """
    kind = cluster_kind(env)
    if kind is None:
        return None
    if kind == "explicit":
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
        return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                "num_processes": int(env["JAX_NUM_PROCESSES"]), "process_id": int(env["JAX_PROCESS_ID"])}
    return {}


def initialize(env: Mapping[str, str] | None = None) -> str | None:
    """Join the cluster this process was launched in (call before any other jax call); returns the
    cluster kind, or None when running as a single process."""
    env = os.environ if env is None else env
    kwargs = initialize_kwargs(env)
    if kwargs is None:
        return None
    jax.distributed.initialize(**kwargs)
    return cluster_kind(env)


def is_primary() -> bool:
    """Whether this process writes the run's shared files (process 0; the only one when single)."""
    return jax.process_index() == 0


def process_dir(workdir: str) -> str:
    """Where this process writes its non-checkpoint files: `workdir` itself for the primary process,
    `workdir/process_<i>` for the others (created)."""
    if is_primary():
        return workdir
    path = os.path.join(workdir, f"process_{jax.process_index()}")
    os.makedirs(path, exist_ok=True)
    return path


def process_batches(source: Any, *, global_batch_size: int, seed: int, process_index: int | None = None,
                    process_count: int | None = None, num_epochs: int | None = None):
    """This process's rows of each global batch: a resumable grain iterator like `leanjax.data.batches`.

    Every process shuffles identically (same seed) and cuts the stream into slices of
    `global_batch_size / process_count` rows; process p takes slices p, p + P, p + 2P, ..., so global batch k
    (rows [kB, (k+1)B) of the stream) is process 0's k-th slice, then process 1's, and so on: the processes'
    rows are disjoint, and the batches are the same whatever the number of processes.
    """
    import grain

    from leanjax.data.pipeline import _check_batch_size

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    _check_batch_size(source, global_batch_size)
    dataset = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
    dataset = dataset.batch(global_batch_size // process_count)[process_index::process_count]
    return iter(dataset.to_iter_dataset())


def global_batch(local: Any, shardings: Any) -> Any:
    """Assemble the global `jax.Array` batch from each process's local rows (numpy); `shardings` is a tree
    like `local` or one sharding for every leaf (a replicated one takes each process's whole array)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(shardings, np.asarray(x)), local)
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), local, shardings)


class GlobalBatches:
    """An iterator of global batches over a process-local grain iterator, keeping its `get_state()` /
    `set_state()` (so `leanjax.train.fit` checkpoints and restores the data position as usual)."""

    def __init__(self, local: Any, shardings: Any):
        self.local, self.shardings = local, shardings

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        return global_batch(next(self.local), self.shardings)

    def get_state(self) -> Any:
        return self.local.get_state()

    def set_state(self, state: Any) -> None:
        self.local.set_state(state)


def place(x: Any, sharding: Any) -> jax.Array:
    """One value that is the same on every process (params from the same seed, the same batch) as a global
    array with `sharding`: each process fills the shards its own devices hold. Typed PRNG keys included."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(place(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, sharding: Any) -> Any:
    """`place` every leaf of `tree` with the one `sharding` (typically replicated)."""
    return jax.tree.map(lambda x: place(x, sharding), tree)


def agree(values: Any) -> Any:
    """Process 0's `values` on every process (a no-op in a single process): decisions made from timings,
    which differ between processes, must be the same everywhere or the processes run different programs."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(values))

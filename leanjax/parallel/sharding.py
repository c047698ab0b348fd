"""Logical axis rules: param paths -> logical axes -> mesh axes -> `NamedSharding`.

Two small tables decide where every array lives:

- `PARAM_RULES`: `(regex, logical axes)` pairs matched (`re.search`) against a leaf's `path_str` name,
  e.g. `transformer/layers/0/attention/query/kernel`. The axes name the leaf's *trailing* dimensions;
  extra leading dimensions (the stacked `layers` axis of a scanned model) are named `layers`. Because the
  match is a search, the same rules place the optimizer moments (`opt_state/0/mu/<param path>`) exactly
  like their params. The first matching rule wins; an unmatched leaf is replicated.
- `AXIS_RULES`: logical axis -> mesh axis (or tuple of mesh axes, or None).

A mesh axis that does not divide a dimension is dropped for that leaf (replicated along it), so one rule
set serves every mesh the planner tries, and a mesh axis is used at most once per leaf.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from leanjax.trees import path_str

Rules = Sequence[tuple[str, tuple[str | None, ...]]]
AxisRules = Mapping[str, str | tuple[str, ...] | None]

# leanjax's Transformer (unrolled `layers/<i>/...` or scanned `layers/...`), CNN and MLP. Kernels are
# [in, out]; attention projections are [embed, heads * head_dim], so `heads` shards whole heads as
# long as the tensor axis divides the number of heads.
PARAM_RULES: Rules = (
    (r"attention/(query|key|value)/kernel$", ("embed", "heads")),
    (r"attention/(query|key|value)/bias$", ("heads",)),
    (r"attention/output/kernel$", ("heads", "embed")),
    (r"intermediate/kernel$", ("embed", "mlp")),
    (r"intermediate/bias$", ("mlp",)),
    (r"layers/(\d+/)?output/kernel$", ("mlp", "embed")),
    # leanjax.models.decoder (Llama / Qwen / Gemma / Mistral): stacked q/k/v/o and gated-MLP kernels.
    (r"layers/(q|k|v)/kernel$", ("embed", "heads")),
    (r"layers/(q|k|v)/bias$", ("heads",)),
    (r"layers/o/kernel$", ("heads", "embed")),
    (r"layers/(gate|up)/kernel$", ("embed", "mlp")),
    (r"layers/down/kernel$", ("mlp", "embed")),
    (r"(word|embed)/embedding$", ("vocab", "embed")),
    (r"(position|token_type)/embedding$", (None, "embed")),
    (r"(lm_head|head|classifier)/kernel$", ("embed", "vocab")),
    (r"convs/\d+/kernel$", (None, None, None, "mlp")),
    (r"(hidden|dense|layers/\d+)/kernel$", ("embed", "mlp")),
)

# Megatron-style tensor parallelism over `tensor`, ZeRO-3-style parameter sharding over `fsdp`, and the
# batch over both `data` and `fsdp` (fsdp is data parallelism whose params are sharded too).
AXIS_RULES: AxisRules = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
}


def logical_axes(path: str, ndim: int, rules: Rules = PARAM_RULES) -> tuple[str | None, ...]:
    """The logical axis of each dimension of the leaf named `path`."""
    for pattern, axes in rules:
        if re.search(pattern, path):
            if len(axes) > ndim:
                raise ValueError(f"rule {pattern!r} names {len(axes)} axes {axes} but {path} has {ndim} dims")
            return ("layers",) * (ndim - len(axes)) + tuple(axes)
    return (None,) * ndim


def partition_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh,
                   axis_rules: AxisRules = AXIS_RULES) -> P:
    """Map logical axes to a `PartitionSpec`, dropping mesh axes that are size 1, absent, already used,
    or do not divide the dimension."""
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape):
        target = axis_rules.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        chosen, size = [], 1
        for t in targets:
            n = mesh.shape.get(t, 1)
            if n > 1 and t not in used and dim % (size * n) == 0:
                chosen.append(t)
                size *= n
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*out)


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh, rules: Rules = PARAM_RULES,
                   axis_rules: AxisRules = AXIS_RULES) -> Any:
    """A `NamedSharding` for every array leaf of `tree` (params, a TrainState, abstract shapes...)."""

    def leaf(path, x):
        shape = getattr(x, "shape", ())
        axes = logical_axes(path_str(path), len(shape), rules)
        return NamedSharding(mesh, partition_spec(axes, shape, mesh, axis_rules))

    return jax.tree_util.tree_map_with_path(leaf, tree)


def batch_sharding(mesh: jax.sharding.Mesh, batch: Any, axis_rules: AxisRules = AXIS_RULES) -> Any:
    """Shard every batch leaf's leading dimension along the `batch` logical axis."""
    return jax.tree.map(lambda x: NamedSharding(
        mesh, partition_spec(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh, axis_rules)), batch)


def describe(tree: Any, shardings: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """`(path, shape, spec)` rows: what went where, for logs and tests."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    specs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
    return [(path_str(p), tuple(x.shape), str(s.spec)) for (p, x), s in zip(flat, specs)]


def shard(tree: Any, shardings: Any) -> Any:
    """Place `tree` with `shardings` (a copy; the input is left as it was). In a multi-process run every
    process passes the same values (same seed, same batch) and fills the shards of its own devices."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    from leanjax.parallel.multihost import place

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: place(x, shardings), tree)
    return jax.tree.map(place, tree, shardings)


def sharded_train_step(make_step: Callable[..., Callable], state: Any, batch: Any, mesh: jax.sharding.Mesh,
                       rules: Rules = PARAM_RULES, axis_rules: AxisRules = AXIS_RULES,
                       **step_kwargs) -> tuple[Callable, Any, Any]:
    """`(step, state_shardings, batch_shardings)` for `make_step` (e.g. `leanjax.step.make_train_step`
    with its loss and optimizer bound) compiled with explicit in/out shardings over `mesh`.

    The state keeps its sharding from step to step (`out_shardings` equals `in_shardings`, so donation
    reuses the buffers); metrics come back replicated.
    """
    state_sh = tree_shardings(state, mesh, rules, axis_rules)
    batch_sh = batch_sharding(mesh, batch, axis_rules)
    replicated = NamedSharding(mesh, P())
    step = make_step(in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated), **step_kwargs)
    return step, state_sh, batch_sh

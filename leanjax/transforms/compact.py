"""Structured pruning that shrinks the arrays: whole neurons, conv channels or attention heads are
scored, masked, and then physically removed (`compact`), with the layers that read them adjusted.

A `Group` is one set of prunable units (the output channels of one conv, the neurons of one hidden
layer, the heads of one attention layer) and every slice of the params that belongs to a unit: the
*producer* slices that compute it (kernel columns, bias entries) and the *consumer* slices that read it
(the next layer's kernel rows). Along a slot's axis, entry `(o * size + u) * inner + i` belongs to unit
`u`: `inner` is the head size for heads, `outer` (implied) the spatial positions when a conv output is
flattened (NHWC) into a dense layer.

    groups = cnn_groups(params)                          # or mlp_groups / transformer_groups
    masks, keep = structured_masks(params, groups, 0.5)  # magnitude scores, same count kept per group
    small = compact(apply_masks(params, masks), groups, keep)   # smaller arrays, same outputs

Units are scored by the L2 norm of their producer and consumer slices together (Li et al. 2017,
"Pruning Filters for Efficient ConvNets", arXiv:1608.08710, score filters by norm). Every group of a
kind keeps the same count, because leanjax models take one width per kind (`intermediate_size`,
`features`) rather than one per layer. The masked and the compacted models compute the same function:
a pruned unit's pre-activation is 0, and ReLU / GELU / max-pool map 0 to 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leanjax.transforms.prune import Masks, _keep_top
from leanjax.transforms.select import leaves_with_paths
from leanjax.trees import path_str


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one group's units sit in one leaf: along `axis`, in blocks of `inner` consecutive entries."""

    path: str
    axis: int
    inner: int = 1


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    size: int
    producers: tuple[Slot, ...]
    consumers: tuple[Slot, ...]

    @property
    def slots(self) -> tuple[Slot, ...]:
        return self.producers + self.consumers


def _units_view(w: jax.Array, slot: Slot, size: int) -> jax.Array:
    """`w` with `slot.axis` split into `(outer, size, inner)`."""
    axis = slot.axis % w.ndim
    n = w.shape[axis]
    if n % (size * slot.inner):
        raise ValueError(f"{slot.path}: axis {axis} of shape {w.shape} is not a multiple of "
                         f"{size} units x {slot.inner}")
    return w.reshape(*w.shape[:axis], n // (size * slot.inner), size, slot.inner, *w.shape[axis + 1:])


def _leaves(params: Any) -> dict[str, Any]:
    return dict(leaves_with_paths(params))


def unit_scores(params: Any, group: Group) -> jax.Array:
    """L2 norm of each unit's slices (producers and consumers), shape `[group.size]`."""
    leaves = _leaves(params)
    total = jnp.zeros(group.size, jnp.float32)
    for slot in group.slots:
        if slot.path not in leaves:
            raise KeyError(f"group {group.name!r}: no leaf {slot.path!r} in params")
        w = leaves[slot.path]
        view = _units_view(jnp.square(w.astype(jnp.float32)), slot, group.size)
        axis = slot.axis % w.ndim + 1  # the units axis in the view
        total = total + jnp.moveaxis(view, axis, 0).reshape(group.size, -1).sum(-1)
    return jnp.sqrt(total)


def structured_masks(params: Any, groups: Sequence[Group], sparsity: float) -> tuple[Masks, dict[str, jax.Array]]:
    """Masks removing the lowest-scored units of every group (neurons, channels, heads).

    Args:
      params: a params tree.
      groups: the units, e.g. `mlp_groups(params)`, `cnn_groups(params)`, `transformer_groups(...)`.
      sparsity: the fraction of each group's units to drop.

    Returns:
      `(masks, keep)`: a mask tree (`leanjax.transforms.prune` format) and one bool vector per group name
      (True = unit kept), which `compact` takes.
    """
    keep = {g.name: _keep_top(unit_scores(params, g), jnp.asarray(sparsity)) for g in groups}
    return masks_from_keep(params, groups, keep), keep


def masks_from_keep(params: Any, groups: Sequence[Group], keep: dict[str, jax.Array]) -> Masks:
    """The params-shaped masks (None at untouched leaves) that zero every slice of every dropped unit."""
    leaves = _leaves(params)
    masks: dict[str, jax.Array] = {}
    for g in groups:
        for slot in g.slots:
            w = leaves[slot.path]
            axis = slot.axis % w.ndim
            shape = [1] * (w.ndim + 2)
            shape[axis + 1] = g.size
            view_mask = jnp.broadcast_to(keep[g.name].reshape(shape), _units_view(w, slot, g.size).shape)
            m = view_mask.reshape(w.shape)
            masks[slot.path] = masks[slot.path] & m if slot.path in masks else m
    return jax.tree_util.tree_map_with_path(lambda p, _: masks.get(path_str(p)), params)


def compact(params: Any, groups: Sequence[Group], keep: dict[str, Any]) -> Any:
    """`params` with every dropped unit's slices removed: smaller arrays, same function as the masked params.

    Runs eagerly (the kept indices decide the shapes).

    Args:
      params: a params tree (masked or not: dropped slices are removed either way).
      groups: the groups `keep` refers to.
      keep: group name -> bool vector, from `structured_masks`.

    Returns:
      The smaller params tree, for the model built at the smaller widths.
    """
    leaves = _leaves(params)
    for g in groups:
        kept = np.flatnonzero(np.asarray(keep[g.name]))
        for slot in g.slots:
            w = leaves[slot.path]
            axis = slot.axis % w.ndim
            view = _units_view(w, slot, g.size)
            taken = jnp.take(view, kept, axis=axis + 1)
            leaves[slot.path] = taken.reshape(*w.shape[:axis], -1, *w.shape[axis + 1:])
    return jax.tree_util.tree_map_with_path(lambda p, _: leaves[path_str(p)], params)


# --- Group builders for leanjax's models ---------------------------------------------------------------


def _dense(prefix: str, size: int, consumer: Slot) -> Group:
    return Group(prefix, size, (Slot(f"{prefix}/kernel", -1), Slot(f"{prefix}/bias", 0)), (consumer,))


def mlp_groups(params: Any) -> list[Group]:
    """The hidden neurons of `leanjax.models.MLP` (every layer but the output one).

    Args:
      params: the MLP's params.

    Returns:
      One `Group` per hidden layer.
    """
    layers = params["layers"]
    n = len(layers)
    return [_dense(f"layers/{i}", layers[i]["kernel"].shape[-1], Slot(f"layers/{i + 1}/kernel", 0))
            for i in range(n - 1)]


def cnn_groups(params: Any) -> list[Group]:
    """The conv output channels and the dense hidden neurons of `leanjax.models.CNN`.

    The last conv's channels are read by `hidden` through the NHWC flatten, where the channel is the
    fastest-varying index: `Slot(inner=1)` with the spatial positions as the implied outer blocks.

    Args:
      params: the CNN's params.

    Returns:
      One `Group` per conv layer and one for the hidden dense layer.
    """
    convs = params["convs"]
    n = len(convs)
    groups = [_dense(f"convs/{i}", convs[i]["kernel"].shape[-1],
                     Slot(f"convs/{i + 1}/kernel", -2) if i + 1 < n else Slot("hidden/kernel", 0))
              for i in range(n)]
    groups.append(_dense("hidden", params["hidden"]["kernel"].shape[-1], Slot("head/kernel", 0)))
    return groups


def transformer_groups(params: Any, num_heads: int, *, prefix: str = "encoder/", heads: bool = True,
                       neurons: bool = True) -> list[Group]:
    """Per layer of a BERT-layout `Transformer`: the attention heads and the intermediate neurons.

    Heads are the query/key/value columns and the output projection's rows, in blocks of `head_dim`;
    neurons the intermediate columns and the output's rows.

    Args:
      params: the model's params (unrolled layers).
      num_heads: attention heads per layer.
      prefix: where the layers live in the params ('encoder/' for `SequenceClassifier`).
      heads: include the head groups.
      neurons: include the neuron groups.

    Returns:
      The `Group`s, layer by layer.
    """
    layers = params
    for part in prefix.strip("/").split("/") if prefix.strip("/") else ():
        layers = layers[part]
    layers = layers["layers"]
    groups = []
    for i in sorted(layers):
        base = f"{prefix}layers/{i}"
        layer = layers[i]
        if heads:
            head_dim = layer["attention"]["query"]["kernel"].shape[-1] // num_heads
            producers = tuple(Slot(f"{base}/attention/{n}/{leaf}", -1 if leaf == "kernel" else 0, head_dim)
                              for n in ("query", "key", "value") for leaf in ("kernel", "bias"))
            groups.append(Group(f"{base}/heads", num_heads, producers,
                                (Slot(f"{base}/attention/output/kernel", 0, head_dim),)))
        if neurons:
            groups.append(_dense(f"{base}/intermediate", layer["intermediate"]["kernel"].shape[-1],
                                 Slot(f"{base}/output/kernel", 0)))
    return groups


def cut_vocab(token_ids: np.ndarray, vocab_size: int, keep: int, *, always: Sequence[int] = (),
              unk_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The `keep` most frequent ids of `token_ids` (plus `always`), and a table mapping old ids to new ones.

    A student model needs embedding rows only for the tokens it will see: slice the table with `kept`
    (`table[kept]`) and feed `remap[input_ids]`; ids that were cut map to `unk_id`'s new row.

    Args:
      token_ids: the ids of a corpus (any shape), e.g. the tokenized training pool.
      vocab_size: the old vocabulary size (every id in `token_ids` is below it).
      keep: how many ids to keep, `always` included (ties broken by the smaller id).
      always: ids kept whatever their count (padding, special tokens); `unk_id` is always kept.
      unk_id: the old id that cut ids map to.

    Returns:
      `(kept, remap)`: the kept old ids in increasing order (int32, `keep` of them or fewer when the
      vocabulary is smaller) and an int32 table of `vocab_size` new ids.
    """
    ids = np.asarray(token_ids).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    forced = sorted({*map(int, always), int(unk_id)})
    if any(not 0 <= i < vocab_size for i in forced):
        raise ValueError(f"always/unk_id ids {forced} must lie in [0, {vocab_size})")
    if keep < len(forced):
        raise ValueError(f"keep={keep} is smaller than the {len(forced)} ids that are always kept")
    counts = np.bincount(ids, minlength=vocab_size).astype(np.int64)
    counts[forced] = counts.max(initial=0) + 1
    kept = np.sort(np.argsort(-counts, kind="stable")[:keep]).astype(np.int32)
    remap = np.full(vocab_size, np.searchsorted(kept, unk_id), np.int32)
    remap[kept] = np.arange(len(kept), dtype=np.int32)
    return kept, remap

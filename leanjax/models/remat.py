"""Named gradient-checkpointing (rematerialisation) policies for `jax.checkpoint`.

Models tag activations with `jax.ad_checkpoint.checkpoint_name` (the names in `CHECKPOINT_NAMES`) and
wrap each transformer block in `jax.checkpoint(block, policy=checkpoint_policy(name))`. A policy decides
which residuals the backward pass reads back from memory; everything else is recomputed.
See https://docs.jax.dev/en/latest/gradient-checkpointing.html.

| name          | saves                                             | jax policy                             |
|---------------|---------------------------------------------------|----------------------------------------|
| `none`        | no remat: the block is not wrapped (returns None) | -                                      |
| `everything`  | every residual (wrapping without saving memory)   | `everything_saveable`                  |
| `dots`        | matmul outputs without batch dims                 | `dots_with_no_batch_dims_saveable`     |
| `nothing`     | only the block inputs: full recompute             | `nothing_saveable`                     |
| `names:a,b`   | the tagged activations `a`, `b`                   | `save_only_these_names`                |
| `offload`     | offloads `block_out` to host memory               | `save_and_offload_only_these_names`    |
| `offload:a,b` | offloads `a`, `b` to host memory                  | `save_and_offload_only_these_names`    |
| `segment:k`   | scanned stacks only: the input of every k-th block | nested `nothing_saveable` (`segment_scan`) |

`segment:k` is nested (segment) checkpointing (Chen et al. 2016, https://arxiv.org/abs/1604.06174,
section 4; k = sqrt(L) is their O(sqrt(L)) schedule): the L scanned blocks run as L/k segments of k;
the forward keeps only each segment's input, and the backward recomputes one segment at a time, keeping
its k block inputs while it runs the blocks' backward one by one (each block fully recomputed). It keeps
L/k + k block inputs instead of `nothing`'s L, for one more forward pass of recompute.

Offloading moves residuals to the `pinned_host` memory space. A backend without one raises a ValueError
naming the backend rather than silently falling back, so a memory budget is never met by accident.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

# Activations the leanjax models tag (see leanjax/models/transformer.py).
CHECKPOINT_NAMES = ("attn_qkv", "attn_scores", "attn_out", "mlp_hidden", "block_out")

_SIMPLE = {
    "everything": jax.checkpoint_policies.everything_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing": jax.checkpoint_policies.nothing_saveable,
}
VALID_POLICIES = ("none", *_SIMPLE, "names:<a,b,...>", "offload", "offload:<a,b,...>", "segment:<k>")


def _names(name: str, spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKPOINT_NAMES))
    if not names or unknown:
        raise ValueError(f"remat policy {name!r}: give a comma-separated subset of {CHECKPOINT_NAMES}"
                         + (f"; unknown: {unknown}" if unknown else ""))
    return names


def validate_policy_name(name: str) -> None:
    """Raise ValueError if `name` is not a policy name; cheap, touches no device."""
    kind, _, spec = name.partition(":")
    if name in ("none", *_SIMPLE, "offload"):
        return
    if kind in ("names", "offload") and spec:
        _names(name, spec)
        return
    if kind == "segment":
        segment_size(name)
        return
    raise ValueError(f"unknown remat policy {name!r}; valid: {', '.join(VALID_POLICIES)}")


def checkpoint_policy(name: str) -> Callable | None:
    """The `jax.checkpoint` policy called `name`, or None for 'none' (the caller does not wrap)."""
    validate_policy_name(name)
    if name == "none":
        return None
    if name in _SIMPLE:
        return _SIMPLE[name]
    kind, _, spec = name.partition(":")
    if kind == "names":
        return jax.checkpoint_policies.save_only_these_names(*_names(name, spec))
    if kind == "segment":  # each block inside a segment: full recompute (`segment_scan` nests the segments)
        return jax.checkpoint_policies.nothing_saveable
    offloaded = _names(name, spec) if spec else ["block_out"]
    backend = jax.default_backend()
    kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
    if "pinned_host" not in kinds:
        raise ValueError(f"remat policy {name!r} offloads to pinned_host memory, which the {backend!r} "
                         f"backend does not have (memory kinds: {sorted(kinds)}); use 'names:...' instead")
    return jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=offloaded,
        offload_src="device", offload_dst="pinned_host")


def segment_size(name: str) -> int | None:
    """k of a `segment:k` policy name, None for any other policy; raises ValueError on a bad k."""
    kind, _, spec = name.partition(":")
    if kind != "segment":
        return None
    if not spec.strip().isdigit() or int(spec) < 1:
        raise ValueError(f"remat policy {name!r}: give segment:<k> with k a positive number of blocks per segment")
    return int(spec)


def segment_scan(body: Callable, carry, xs, k: int):
    """`jax.lax.scan(body, carry, xs)` run as segments of `k` steps, each segment checkpointed.

    The outer scan keeps only each segment's input carry; its backward recomputes a segment's inner scan
    (`body` should itself be remat-wrapped, so that the inner scan keeps only its k step inputs).

    Args:
      body: `(carry, x) -> (carry, y)`, as for `lax.scan`.
      carry: the initial carry.
      xs: a pytree of arrays with a common leading length L, divisible by `k`.
      k: steps per segment.

    Returns:
      `(final carry, stacked ys)`, the same as the plain scan.
    """
    length = jax.tree.leaves(xs)[0].shape[0]
    if length % k:
        raise ValueError(f"segment remat: {length} scanned blocks are not divisible by segments of k={k}")
    grouped = jax.tree.map(lambda x: x.reshape(length // k, k, *x.shape[1:]), xs)

    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def segment(c, group):
        return jax.lax.scan(body, c, group)

    carry, ys = jax.lax.scan(segment, carry, grouped)
    return carry, jax.tree.map(lambda y: y.reshape(length, *y.shape[2:]), ys)

"""Pytree helpers shared by the optimizer, the train step and the transforms.

A *trainable mask* is a pytree of bools with the same structure as the params (typed weights such as a
LoRA weight flatten into their array leaves, so the mask can freeze a base weight and train its
adapters). `partition` splits params into the part the optimizer sees and the frozen rest; `combine`
puts them back. Frozen leaves become `None`, which jax treats as an empty subtree: gradients, optimizer
moments and updates are never allocated for them.
"""

from __future__ import annotations

from typing import Any

import jax


def _is_none(x: Any) -> bool:
    return x is None


def partition(params: Any, mask: Any | None) -> tuple[Any, Any]:
    """Split `params` by a bool `mask` into `(trainable, frozen)`, each with `None` where the other has a leaf.

    Args:
      params: a params tree (typed weights flatten into their array leaves).
      mask: a bool tree with the leaves of `params` (e.g. `leanjax.transforms.trainable(params)`); None:
        everything is trainable.

    Returns:
      `(trainable, frozen)`: two trees of the params structure, `combine` puts them back together.
    """
    if mask is None:
        return params, jax.tree.map(lambda _: None, params)
    try:
        trainable = jax.tree.map(lambda p, m: p if m else None, params, mask)
        frozen = jax.tree.map(lambda p, m: None if m else p, params, mask)
    except ValueError as e:
        raise ValueError(
            "trainable mask does not match the params tree: build it from the same params "
            f"(e.g. leanjax.transforms.trainable(params)). {e}") from None
    return trainable, frozen


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of `partition`: take each leaf from whichever side holds it.

    Args:
      trainable: the first tree `partition` returned (possibly updated).
      frozen: the second.

    Returns:
      The params tree.
    """
    return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen, is_leaf=_is_none)


def path_str(path: tuple) -> str:
    """'/'-joined readable name of a pytree key path, e.g. 'layers/0/attention/query/kernel'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def count_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))

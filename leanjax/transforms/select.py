"""Choosing which leaves of a params tree a transform replaces.

A target is a regex matched with `re.fullmatch` against the leaf's '/'-joined path (e.g.
`r".*attention/(query|key|value)/kernel"`), or a predicate `fn(path, leaf) -> bool`. Typed weights count
as leaves, so a second transform can target a weight the first one replaced (quantize, then LoRA).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax

from leanjax.transforms.typed import is_typed
from leanjax.trees import path_str

Targets = str | Callable[[str, Any], bool]


def leaves_with_paths(params: Any) -> list[tuple[str, Any]]:
    """`(path, leaf)` pairs, typed weights kept whole."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_typed)
    return [(path_str(p), leaf) for p, leaf in flat]


def _matcher(targets: Targets) -> Callable[[str, Any], bool]:
    if callable(targets):
        return targets
    pattern = re.compile(targets)
    return lambda path, _: pattern.fullmatch(path) is not None


def select(params: Any, targets: Targets, fn: Callable[[str, Any], Any]) -> Any:
    """`params` with each targeted leaf `x` at `path` replaced by `fn(path, x)`.

    Raises if nothing matches, listing some of the paths there are.
    """
    match = _matcher(targets)
    hit = []

    def one(key_path, leaf):
        path = path_str(key_path)
        if not match(path, leaf):
            return leaf
        hit.append(path)
        return fn(path, leaf)

    out = jax.tree_util.tree_map_with_path(one, params, is_leaf=is_typed)
    if not hit:
        paths = [p for p, _ in leaves_with_paths(params)]
        shown = ", ".join(repr(p) for p in paths[:8])
        if len(paths) > 8:
            shown += f", ... ({len(paths)} in all)"
        raise ValueError(f"targets {targets!r} matched no leaf; paths are: {shown}")
    return out

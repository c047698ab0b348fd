"""Kernel layouts: which axes of a weight are stacked layers, inputs and outputs.

A layout is a string with one letter per axis of the weight: `s` for a stack axis (layers stacked for
`jax.lax.scan`; always leading), `i` for an input axis (contracted with the activations), `o` for an
output axis. The common ones:

    'io'   [in, out]                 Flax Dense / Linen / NNX kernels, raw `x @ w` (the 2-D default)
    'oi'   [out, in]                 Equinox `eqx.nn.Linear.weight`, PyTorch `nn.Linear.weight`
    'sio'  [layers, in, out]         a scanned model's stacked kernels
    'ioo'  [embed, heads, head_dim]  per-head attention q/k/v (Flax `DenseGeneral`, lm1b)
    'iio'  [heads, head_dim, embed]  per-head attention output projection
    'oio'  [heads, embed, head_dim]  Gemma's q/k/v einsum kernels

A 2-D weight with no layout is taken as 'io'; a weight of 3 or more axes has no safe default (the first
axis could be layers, or inputs, or heads), so it needs one: `LayoutError` names its shape and the
choices. LoRA adapters span the flattened input and output axes, as HF PEFT's do (A `[in_flat, r]`, B
`[r, out_flat]` per layer), and quantization scales group along the last input axis.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Layout = str | Callable[[str, Any], str] | None

NAMED = {
    "io": "[in, out]", "oi": "[out, in]", "sio": "[layers, in, out]", "ioo": "[embed, heads, head_dim]",
    "iio": "[heads, head_dim, embed]", "oio": "[heads, embed, head_dim]",
}


class LayoutError(ValueError):
    """A weight's layout is missing (ambiguous for 3-D and larger kernels) or does not fit its shape."""


def _choices() -> str:
    return ", ".join(f"{k!r} {v}" for k, v in NAMED.items())


def resolve(layout: Layout, path: str, leaf: Any) -> tuple[int, str]:
    """`(n_stack, axes)` for `leaf` at `path`: the number of leading stack axes and the 'i'/'o' letters of
    the remaining axes in order.

    Args:
      layout: a layout string, `fn(path, leaf) -> layout string`, or None (2-D weights only: 'io').
      path: the leaf's '/'-joined path, for errors.
      leaf: the weight (anything with `.shape`).

    Returns:
      `(n_stack, axes)`; raises `LayoutError` naming the path, shape and the choices.
    """
    shape = tuple(leaf.shape)
    if callable(layout):
        layout = layout(path, leaf)
    if layout is None:
        if len(shape) == 2:
            return 0, "io"
        raise LayoutError(
            f"{path}: a weight of shape {shape} needs layout= (which axes are stacked layers 's', inputs 'i' "
            f"and outputs 'o'); only 2-D weights default to 'io'. Choices: {_choices()}")
    if not isinstance(layout, str) or not re.fullmatch(r"s*[io]+", layout) or not {"i", "o"} <= set(layout):
        raise LayoutError(f"{path}: layout {layout!r} is not leading 's' letters then 'i'/'o' letters with at "
                          f"least one of each; e.g. {_choices()}")
    if len(layout) != len(shape):
        raise LayoutError(f"{path}: layout {layout!r} names {len(layout)} axes, the weight has shape {shape}")
    axes = layout.lstrip("s")
    return len(layout) - len(axes), axes


def quant_axis(n_stack: int, axes: str) -> int:
    """The (negative) axis quantization scales group along: the last input axis."""
    return axes.rindex("i") - len(axes)


def stacked_io(path: str, leaf: Any) -> str:
    """A layout function for Flax `[in, out]` kernels, plain or stacked over leading layer axes ('sio').

    For a tree whose kernels are all 2-D per layer, e.g. a leanjax Transformer with or without
    `scan_layers`: `lora(params, targets, ..., layout=stacked_io)`.

    Args:
      path: the leaf's '/'-joined path (unused: every kernel gets the same rule).
      leaf: the weight; its leading axes beyond the last two are stacked layers.

    Returns:
      the layout string, e.g. 'io' or 'sio'.
    """
    return "s" * (len(leaf.shape) - 2) + "io"

"""Model FLOPs: what a step must compute, independent of how XLA compiles it.

MFU divides these by time and peak. Conventions (PaLM, Chowdhery et al. 2022, appendix B): a
forward pass costs 2 FLOPs per parameter per token (one multiply-add), training 6 (forward plus
twice that backward), and attention adds 4 * n_layers * seq_len * d_model per token forward
(Q K^T and the weighted sum of V), never halved for causal masking. Recomputation (remat) is not
model work: it appears in the hardware count (HFU), not here.

`jaxpr_flops` counts the same thing for any function by tracing it: the multiply-adds of every
`dot_general` and convolution, scans counted `length` times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from jax.extend import core as jex_core


def dense_flops(n_params: float, examples: float, *, train: bool = True) -> float:
    """FLOPs of items (tokens, images...) through matmul weights.

    Args:
      n_params: the matmul weights' entries.
      examples: items through them.
      train: a training step (forward + backward: 6 FLOPs per weight per item) rather than a forward (2).

    Returns:
      FLOPs.
    """
    return (6.0 if train else 2.0) * n_params * examples


def mlp_flops(layer_sizes: Sequence[int], examples: float, *, train: bool = True) -> float:
    """A dense MLP's FLOPs (biases and activations not counted).

    Args:
      layer_sizes: widths, input first.
      examples: items through it.
      train: a training step (forward + backward: 6 FLOPs per weight per item) rather than a forward (2).

    Returns:
      FLOPs.
    """
    weights = sum(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    return dense_flops(weights, examples, train=train)


def transformer_flops(
    n_params: float,
    *,
    n_layers: int,
    d_model: int,
    seq_len: int,
    tokens: float,
    train: bool = True,
) -> float:
    """A Transformer over `tokens` tokens in sequences of `seq_len` (weights plus attention scores).

    Args:
      n_params: the weights that multiply activations per token: every layer's projections and the output
        head, not an input embedding table that is only gathered from (unless it is tied to the head).
      n_layers: layers (for the attention term).
      d_model: heads x head width.
      seq_len: tokens attended to.
      tokens: tokens processed.
      train: a training step (forward + backward: 6 FLOPs per weight per item) rather than a forward (2).

    Returns:
      FLOPs (PaLM's convention).
    """
    attention = 4.0 * n_layers * seq_len * d_model * tokens
    return dense_flops(n_params, tokens, train=train) + (3.0 if train else 1.0) * attention


def conv2d_flops(
    out_height: int, out_width: int, kernel: tuple[int, int], in_channels: int, out_channels: int,
    examples: float, *, groups: int = 1, train: bool = True,
) -> float:
    """A 2-D convolution layer: every output position multiplies a kernel window, padding included.

    Args:
      out_height: output rows.
      out_width: output columns.
      kernel: `(height, width)`.
      in_channels: input channels.
      out_channels: output channels.
      examples: images.
      groups: feature groups (depthwise: `in_channels`).
      train: a training step (forward + backward: 6 FLOPs per weight per item) rather than a forward (2).

    Returns:
      FLOPs.
    """
    per_example = out_height * out_width * math.prod(kernel) * in_channels // groups * out_channels
    return (6.0 if train else 2.0) * per_example * examples


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        width = math.prod(lhs[d] for d in lhs_contract)
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * width
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        window = math.prod(rhs[d] for d in dn.rhs_spec[2:])
        in_features = rhs[dn.rhs_spec[1]]  # already divided by feature groups
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * window * in_features
    return 0.0


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        name = eqn.primitive.name
        if name == "while":
            raise ValueError(
                "jaxpr_flops: a while_loop has no static trip count; use lax.scan or fori_loop with "
                "static bounds, or count this model with the formula helpers"
            )
        if name == "scan":
            total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
            continue
        if name == "cond":
            total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
            continue
        # pjit, remat, custom_jvp/vjp calls, shard_map...: their sub-jaxprs run once.
        for value in eqn.params.values():
            if isinstance(value, jex_core.ClosedJaxpr):
                total += _jaxpr_flops(value.jaxpr)
            elif isinstance(value, jex_core.Jaxpr):
                total += _jaxpr_flops(value)
    return total


def jaxpr_flops(fn: Callable, *args, **kwargs) -> float:
    """Matmul and convolution FLOPs of `fn(*args, **kwargs)` as traced (nothing is compiled).

    Count the forward function and use `3 *` it for a training step: differentiating `fn` and counting the
    result would also count what the backward pass recomputes under remat.

    Args:
      fn: the function.
      *args: its arguments (arrays or `jax.ShapeDtypeStruct`s).
      **kwargs: its keyword arguments.

    Returns:
      FLOPs (scan bodies times their trip counts).
    """
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)

"""Gradients of a function of a typed tree with respect to its trainable leaves only.

Plain `jax.grad` over a QLoRA tree fails with JAX's "grad requires real- or complex-valued inputs ...
int8": it differentiates every leaf, integer codes included. The recipe is partition / combine: split the
params by `trainable(params)`, differentiate the trainable half, rebuild the full tree inside the
function. `value_and_grad` and `grad` do that, and run `fn` under `apply`:

    loss, grads = T.value_and_grad(loss_fn)(params, batch)    # grads: adapters only, None elsewhere
    params = T.combine(optax.apply_updates(T.partition(params, T.trainable(params))[0], updates), frozen)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from leanjax.transforms.trees import combine, partition, trainable
from leanjax.transforms.typed import apply


def value_and_grad(fn: Callable[..., Any], *, has_aux: bool = False,
                   freeze_plain: bool = False) -> Callable[..., tuple[Any, Any]]:
    """`fn(params, *args)` and its gradient with respect to the trainable leaves of `params`.

    Args:
      fn: a plain function of `(params, *args, **kwargs)` returning a scalar (or `(scalar, aux)` with
        `has_aux`); it is run under `apply`, so it sees typed weights as arrays.
      has_aux: as in `jax.value_and_grad`.
      freeze_plain: also freeze plain float leaves (biases, norms), as in `trainable`.

    Returns:
      a function returning `(value, grads)`; `grads` has the structure of `params` with `None` at every
      leaf `trainable(params)` marks False (bases, codes, scales), so it feeds `partition`-ed optimizers.
    """
    def wrapped(params, *args, **kwargs):
        train, frozen = partition(params, trainable(params, freeze_plain=freeze_plain))
        inner = lambda t: apply(fn)(combine(t, frozen), *args, **kwargs)  # noqa: E731
        return jax.value_and_grad(inner, has_aux=has_aux)(train)

    return wrapped


def grad(fn: Callable[..., Any], *, has_aux: bool = False, freeze_plain: bool = False) -> Callable[..., Any]:
    """The gradient part of `value_and_grad` (with `has_aux`: `(grads, aux)`, as `jax.grad`).

    Args:
      fn: a plain function of `(params, *args, **kwargs)` returning a scalar (or `(scalar, aux)`).
      has_aux: as in `jax.grad`.
      freeze_plain: also freeze plain float leaves (biases, norms), as in `trainable`.

    Returns:
      `grad_fn(params, *args, **kwargs)`: gradients for the trainable leaves only.
    """
    vg = value_and_grad(fn, has_aux=has_aux, freeze_plain=freeze_plain)

    def wrapped(params, *args, **kwargs):
        value, grads = vg(params, *args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return wrapped

"""`functional(model)`: an NNX model as a pure `(apply_fn, params)` pair.

`params` is a plain nested dict of arrays (`nnx.to_pure_dict`), the form the optimizer, checkpoints and
typed-weight transforms work on; `apply_fn` rebuilds the module from it with `nnx.merge` (which accepts a
pure dict directly in flax 0.12, so no State is rebuilt) and calls it. Under `quax.quaxify(apply_fn)` the
leaves may be quax `ArrayValue`s (LoRA, int8, ...): the models only touch weights through ops quax
dispatches (see `leanjax.models.layers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx


def functional(model: nnx.Module, method: str = "__call__") -> tuple[Callable[..., Any], dict]:
    """`(apply_fn, params)` with `apply_fn(params, *args, dropout_rng=None, **kw) = model.<method>(...)`.

    `apply_fn` is pure (jit/grad/vmap-safe); `dropout_rng=None` is deterministic. `method` picks another
    entry point, e.g. `functional(classifier, "embed")`.
    """
    if not callable(getattr(model, method, None)):
        raise AttributeError(f"{type(model).__name__} has no method {method!r}")
    graphdef, state = nnx.split(model)
    if len(nnx.state(model, nnx.Not(nnx.Param))):
        raise ValueError(f"{type(model).__name__} holds non-Param variables; leanjax models hold params only")

    def apply_fn(params: dict, *args, dropout_rng=None, **kwargs):
        return getattr(nnx.merge(graphdef, params), method)(*args, dropout_rng=dropout_rng, **kwargs)

    return apply_fn, nnx.to_pure_dict(state)

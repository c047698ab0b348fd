"""Search spaces: a plain mapping from hyperparameter name to a distribution spec, turned into Optuna
distributions so `study.ask(distributions)` samples every parameter up front (the define-and-run form of
ask/tell, which any sampler, TPE included, can sample jointly).

A spec is a tuple, which an experiment config can hold as it is:

    {"learning_rate": ("log", 1e-4, 1e-1),     # log-uniform float
     "dropout": ("float", 0.0, 0.5),           # uniform float
     "dense": ("int", 16, 128),                # uniform integer, bounds included
     "width": ("categorical", (16, 32, 64))}   # one of the choices
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna.distributions as od

KINDS = ("log", "float", "int", "categorical")


def distributions(space: Mapping[str, Any]) -> dict[str, od.BaseDistribution]:
    """Optuna distributions for `space`; a malformed entry is an error that names it."""
    if not space:
        raise ValueError("the search space is empty")
    out = {}
    for name, spec in space.items():
        spec = tuple(spec)
        if not spec or spec[0] not in KINDS:
            raise ValueError(f"search space entry {name!r}={spec!r}: the first item must be one of {KINDS}")
        kind, *args = spec
        if kind == "categorical":
            if len(args) != 1 or not args[0]:
                raise ValueError(f"search space entry {name!r}: use ('categorical', (choice, ...))")
            out[name] = od.CategoricalDistribution(tuple(args[0]))
            continue
        if len(args) != 2 or not args[0] < args[1]:
            raise ValueError(f"search space entry {name!r}={spec!r}: use ({kind!r}, low, high) with low < high")
        low, high = args
        if kind == "log":
            if low <= 0:
                raise ValueError(f"search space entry {name!r}: a log-uniform range needs low > 0, got {low}")
            out[name] = od.FloatDistribution(float(low), float(high), log=True)
        elif kind == "float":
            out[name] = od.FloatDistribution(float(low), float(high))
        else:
            if int(low) != low or int(high) != high:
                raise ValueError(f"search space entry {name!r}: integer bounds expected, got {low}, {high}")
            out[name] = od.IntDistribution(int(low), int(high))
    return out

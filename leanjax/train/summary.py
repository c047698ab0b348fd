"""The experiment contract: `summary.json` in the workdir (see shared DESIGN.md).

`{"experiment", "config", "device", "versions", "wall_s", "metrics", "headline"}`; `headline` holds the
flat, dotted figures that the issues name. `versions` also records XLA_FLAGS when set (they change
compile and step times).
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from typing import Any, Mapping

import numpy as np

_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "quax", "grain", "optuna")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if os.environ.get("XLA_FLAGS"):
        out["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    return out


def device_description() -> str:
    import jax

    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    return f"{d.platform}:{kind} x{jax.device_count()}" + (
        f" ({os.cpu_count()} host cores)" if d.platform == "cpu" else "")


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.generic, np.ndarray)):
        return np.asarray(v).tolist()
    if hasattr(v, "to_dict"):
        return _plain(v.to_dict())
    return v


def write_summary(workdir: str | os.PathLike, *, experiment: str, config: Any, metrics: Mapping,
                  headline: Mapping, wall_s: float, filename: str = "summary.json") -> str:
    """Writes the experiment contract's summary: `{"experiment", "config", "device", "versions", "wall_s",
    "metrics", "headline"}`.

    Args:
      workdir: where it goes.
      experiment: the experiment's name.
      config: its config (a ConfigDict or anything JSON-able).
      metrics: every figure the run reports.
      headline: the figures its issue names, flat dotted keys.
      wall_s: the run's wall time.
      filename: "summary.json", or e.g. "summary.audit.json" for a side job.

    Returns:
      The file's path.
    """
    summary = {"experiment": experiment, "config": _plain(config), "device": device_description(),
               "versions": versions(), "wall_s": round(float(wall_s), 3), "metrics": _plain(metrics),
               "headline": _plain(headline)}
    path = os.path.join(workdir, filename)
    with open(path, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=False, default=str)
    return path

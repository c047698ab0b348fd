"""PNG plots (matplotlib, headless): learning curves from the JSONL metric log, and arms over seeds."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from leanjax.train.writers import read_jsonl


def plot_curves(workdir: str | os.PathLike, keys: Sequence[str] | None = None,
                filename: str = "curves.png", title: str | None = None) -> str | None:
    """One panel per metric (train and eval rows alike), x = step. Returns the PNG path, or None if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    if keys is None:
        keys = sorted({k for r in rows for k, v in r.items()
                       if k != "step" and isinstance(v, (int, float))})
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(workdir, filename)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_arm_curves(panels: Mapping[str, Mapping[str, Sequence[Sequence[tuple[int, float]]]]], path: str, *,
                    targets: Mapping[str, float] | None = None, ylabels: Mapping[str, str] | None = None,
                    ylims: Mapping[str, tuple[float | None, float | None]] | None = None,
                    title: str | None = None) -> str:
    """Writes a PNG with one panel per task: each arm's mean over seeds, shaded between its seeds' min and max.

    Args:
      panels: panel title -> arm -> one curve `[(step, metric), ...]` per seed (the seeds share their steps).
      path: the PNG to write.
      targets: panel -> a dashed horizontal line (e.g. the target of `leanjax.train.curves`).
      ylabels: panel -> y axis label.
      ylims: panel -> (bottom, top), either None to leave it to matplotlib.
      title: a title over the whole figure.

    Returns:
      `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets, ylabels, ylims = targets or {}, ylabels or {}, ylims or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (panel, arms) in zip(axes[0], panels.items()):
        for arm, runs in arms.items():
            steps = [s for s, _ in runs[0]]
            values = np.array([[m for _, m in curve] for curve in runs])
            ax.plot(steps, values.mean(0), label=f"{arm} (mean of {len(runs)})")
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
        if panel in targets:
            ax.axhline(targets[panel], color="k", lw=0.8, ls="--", label="target")
        ax.set(title=panel, xlabel="step", ylabel=ylabels.get(panel, ""))
        if panel in ylims:
            ax.set_ylim(*ylims[panel])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

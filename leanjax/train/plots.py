"""PNG plots (matplotlib, headless): learning curves from the JSONL metric log, and arms over seeds."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from leanjax.train.writers import read_jsonl


def plot_curves(workdir: str | os.PathLike, keys: Sequence[str] | None = None,
                filename: str = "curves.png", title: str | None = None) -> str | None:
    """One panel per metric of the JSONL log (train and eval rows alike), x = step.

    Args:
      workdir: the run's directory (its `metrics.jsonl`).
      keys: the metrics to plot; default every numeric one.
      filename: the PNG's name in `workdir`.
      title: a title over the figure.

    Returns:
      The PNG's path, or None when there is nothing to plot.
    """
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


def plot_bars(series: Mapping[str, Mapping[str, float]], path: str, *, ylabel: str = "", title: str = "",
              ylim: tuple[float, float] | None = None) -> str:
    """Writes a PNG bar chart: one group of bars per category, one bar per series in each (missing: no bar).

    Args:
      series: series (e.g. a model) -> category (e.g. an arm) -> value; the categories are taken in the order
        they first appear.
      path: the PNG to write.
      ylabel: the value axis label.
      title: the title.
      ylim: (bottom, top) of the value axis; None leaves it to matplotlib.

    Returns:
      `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(categories) * max(len(series), 1) ** 0.5 + 2), 3.2))
    for j, (name, values) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(categories))], [values.get(c, np.nan) for c in categories], width,
               label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(categories))], categories,
                  rotation=20 if len(categories) > 6 else 0)
    ax.set(ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

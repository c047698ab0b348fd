"""PNG plots of learning curves from the JSONL metric log (matplotlib, headless)."""

from __future__ import annotations

import os
from typing import Sequence

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

"""Learning curves compared: steps to reach a target metric, and speedups over a baseline arm, seed by seed.

A *curve* is `[(step, metric), ...]` in step order (e.g. an arm's evaluations); an arm run over several
seeds has one curve per seed, the seeds in the same order for every arm. The target is usually the worst
final metric of the baseline's seeds, so that every baseline seed reaches it (Platanios et al. 2019,
arXiv:1903.09848, and Howard & Ruder 2018, arXiv:1801.06146, compare steps to a fixed accuracy this way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Curve = Sequence[tuple[int, float]]


def steps_to_target(curve: Curve, target: float, *, higher_is_better: bool = True) -> int | None:
    """The first step at which a curve reaches a target.

    Args:
      curve: `[(step, metric), ...]` in step order.
      target: the metric to reach.
      higher_is_better: reach means `metric >= target` (accuracy); else `metric <= target` (loss).

    Returns:
      That step, or None when the curve never reaches the target (its resolution is the curve's spacing).
    """
    return next((s for s, m in curve if (m >= target if higher_is_better else m <= target)), None)


def compare_to_baseline(curves: Mapping[str, Sequence[Curve]], *, higher_is_better: bool = True,
                        target: float | None = None, baseline: str = "random") -> dict:
    """Each arm's steps to a target and speedup over the baseline arm, seed by seed.

    Args:
      curves: arm -> one curve per seed (the same seeds, in the same order, for every arm).
      higher_is_better: the metric's direction.
      target: the metric to reach; None (or 0): the worst final metric among the baseline's seeds.
      baseline: the arm the speedups divide.

    Returns:
      `{"target": target, arm: {...}}` with, per arm: `steps_to_target` (mean over seeds, None unless every
      seed reaches it), `steps_to_target_per_seed`, `speedup_per_seed` (baseline steps / arm steps; 0 where
      either never reaches it), `speedup_mean`, `speedup_low`, `final_metric` (mean of the seeds' last
      points), `final_metric_std`, `final_metric_per_seed`.
    """
    if baseline not in curves:
        raise ValueError(f"no {baseline!r} arm to compare with; arms: {sorted(curves)}")
    finals = {arm: [curve[-1][1] for curve in runs] for arm, runs in curves.items()}
    if not target:
        target = (min if higher_is_better else max)(finals[baseline])
    base = [steps_to_target(c, target, higher_is_better=higher_is_better) for c in curves[baseline]]
    out: dict = {"target": target}
    for arm, runs in curves.items():
        steps = [steps_to_target(c, target, higher_is_better=higher_is_better) for c in runs]
        speedups = [b / s if s and b else 0.0 for b, s in zip(base, steps)]
        reached = [s for s in steps if s]
        out[arm] = {
            "steps_to_target": float(np.mean(reached)) if len(reached) == len(steps) else None,
            "steps_to_target_per_seed": steps, "speedup_mean": float(np.mean(speedups)),
            "speedup_low": float(min(speedups)), "speedup_per_seed": speedups,
            "final_metric": float(np.mean(finals[arm])), "final_metric_std": float(np.std(finals[arm])),
            "final_metric_per_seed": finals[arm]}
    return out

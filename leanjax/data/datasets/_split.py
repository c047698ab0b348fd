"""Fixed stratified splits: the same indices on every machine, for every numpy version.

`np.random.RandomState` is used on purpose: its stream is frozen by numpy's compatibility policy,
whereas `default_rng` streams may change between releases.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def stratified_split(
    labels: np.ndarray, holdout: Mapping[str, float], *, seed: int
) -> dict[str, np.ndarray]:
    """Splits example indices by class: each holdout split takes `round(fraction * n_c)` examples of
    every class `c`; "train" gets the rest. Each split comes back in a fixed shuffled order, never
    grouped by class (the MNIST-5k source is sorted by label), so a slice such as `train[85%:]` is a
    fair sample.
    """
    labels = np.asarray(labels)
    if sum(holdout.values()) >= 1.0:
        raise ValueError(f"holdout fractions {dict(holdout)} leave nothing for train")
    rng = np.random.RandomState(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["train", *holdout]}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, fraction in holdout.items():
            stop = start + int(round(fraction * len(idx)))
            parts[name].append(idx[start:stop])
            start = stop
        parts["train"].append(idx[start:])
    return {name: rng.permutation(np.concatenate(p)) for name, p in parts.items()}

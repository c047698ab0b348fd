"""Data sampling from per-example scores: static pruning, InfoBatch dynamic pruning, semantic dedup.

- `select_by_score`: keep the hardest / easiest / middle fraction by a score such as EL2N (Paul et al.
  2021, arXiv:2107.07075), optionally per class; `random_subset` is the same-size control.
- `infobatch_plan`: one epoch of InfoBatch (Qin et al. 2024, arXiv:2303.04947): examples whose last
  loss is below the mean are skipped with probability `prune_ratio` and the kept ones among them
  weighted `1 / (1 - prune_ratio)`, so every example's expected weight stays 1 and the epoch's
  expected gradient is the full-data gradient; the final epochs train on everything (annealing).
- `semantic_dedup`: SemDeDup (Abbas et al. 2023, arXiv:2303.09540): k-means on normalised embeddings,
  then within each cluster drop an example whose cosine similarity to a kept one exceeds `threshold`.
"""

from __future__ import annotations

import math

import numpy as np

from leanjax.data.source import ArraySource

MODES = ("hardest", "easiest", "middle")


def _num_kept(n: int, fraction: float) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * n))


def select_by_score(scores: np.ndarray, fraction: float, mode: str = "hardest",
                    labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted ids of the kept examples: the `fraction` with the highest (`hardest`), lowest
    (`easiest`) or central (`middle`) scores; with `labels`, chosen within each class (class balanced)."""
    scores = np.asarray(scores)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != scores.shape:
            raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
        kept = [ids[select_by_score(scores[ids], fraction, mode)] for ids in
                (np.flatnonzero(labels == c) for c in np.unique(labels))]
        return np.sort(np.concatenate(kept))
    k = _num_kept(len(scores), fraction)
    order = np.argsort(scores, kind="stable")  # easiest first
    start = {"easiest": 0, "hardest": len(scores) - k, "middle": (len(scores) - k) // 2}[mode]
    return np.sort(order[start:start + k])


def random_subset(num_examples: int, fraction: float, seed: int,
                  labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted ids of a random `fraction` (per class with `labels`): the control for any pruned subset."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(num_examples, _num_kept(num_examples, fraction), replace=False))
    labels = np.asarray(labels)
    kept = [rng.choice(ids, _num_kept(len(ids), fraction), replace=False)
            for ids in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(kept))


def holdout_split(source, size: int, seed: int):
    """A seeded random held-out slice of `source` (e.g. a validation set out of a training split).

    Drawn by seed rather than sliced, so the held-out set changes with the seed.

    Args:
      source: a random-access source of dict examples of equal-shape arrays (`len`, `[i]`).
      size: examples held out.
      seed: the draw.

    Returns:
      `(rest, held_out)`: two `ArraySource`s, `len(source) - size` and `size` examples, disjoint.
    """
    if not 0 < size < len(source):
        raise ValueError(f"holdout size {size} must be between 0 and the {len(source)} examples, exclusive")
    examples = [source[i] for i in range(len(source))]
    arrays = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
    order = np.random.default_rng(seed).permutation(len(examples))
    return (ArraySource({k: v[order[size:]] for k, v in arrays.items()}),
            ArraySource({k: v[order[:size]] for k, v in arrays.items()}))


def infobatch_plan(scores: np.ndarray, prune_ratio: float, rng: np.random.Generator, *,
                   seen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's `(ids, weights)`: ids in random order, weights 1 or `1 / (1 - prune_ratio)`.

    Well-learned examples (score below the mean of the seen ones) are each dropped with probability
    `prune_ratio`; examples never seen (`seen` False) are always kept at weight 1.
    """
    scores = np.asarray(scores, np.float64)
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    seen = np.ones(len(scores), bool) if seen is None else np.asarray(seen, bool)
    well_learned = seen & (scores < scores[seen].mean()) if seen.any() else np.zeros(len(scores), bool)
    dropped = well_learned & (rng.random(len(scores)) < prune_ratio)
    ids = rng.permutation(np.flatnonzero(~dropped))
    weights = np.where(well_learned[ids], 1.0 / (1.0 - prune_ratio), 1.0).astype(np.float32)
    return ids, weights


def plan_batches(ids: np.ndarray, weights: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed-size batches of an epoch plan; the last is padded with weight-0 rows (one compiled shape)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num = math.ceil(len(ids) / batch_size)
    pad = num * batch_size - len(ids)
    ids = np.concatenate([ids, np.full(pad, ids[0] if len(ids) else 0)])
    weights = np.concatenate([weights, np.zeros(pad, np.float32)])
    return [(ids[i * batch_size:(i + 1) * batch_size], weights[i * batch_size:(i + 1) * batch_size])
            for i in range(num)]


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 20) -> np.ndarray:
    """Cluster assignment [N] of rows of `x` under cosine similarity (spherical k-means)."""
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iterations):
        assign = np.argmax(x @ centroids.T, axis=1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centroids[c] = members.sum(0) / max(np.linalg.norm(members.sum(0)), 1e-12)
    return np.argmax(x @ centroids.T, axis=1)


def semantic_dedup(embeddings: np.ndarray, threshold: float, *, num_clusters: int = 1,
                   seed: int = 0) -> np.ndarray:
    """Sorted ids kept after removing near-duplicates (cosine similarity > `threshold`).

    Within a cluster, examples are visited from the least to the most typical (farthest from the
    centroid first, as SemDeDup does) and one is dropped if it is too similar to any example visited
    before it, so of each duplicate group the least prototypical survives.
    """
    x = np.asarray(embeddings, np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape {x.shape}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    assign = kmeans(x, num_clusters, seed) if num_clusters > 1 else np.zeros(len(x), int)
    kept = []
    for c in np.unique(assign):
        ids = np.flatnonzero(assign == c)
        centroid = x[ids].mean(0)
        ids = ids[np.argsort(x[ids] @ centroid, kind="stable")]  # least typical first
        sim = np.triu(x[ids] @ x[ids].T, k=1)  # sim[i, j]: i visited before j
        kept.append(ids[sim.max(0, initial=-1.0) <= threshold])
    return np.sort(np.concatenate(kept))

"""Curriculum learning: difficulty orders, pacing functions, and a resumable curriculum sampler.

Competence-based curriculum (Platanios et al. 2019, arXiv:1903.09848): at step t the model may draw
training examples from the easiest `competence(t) * N` of them; competence rises from `c0` to 1 by
`total_steps` along a pacing function (linear, root-p, step, exponential). Difficulty is any per-example
score (a reference model's loss, EL2N, length); `anti` reverses the order and `random_order` is the
control with the same pacing. Sequence-length warmup (Li et al. 2022, arXiv:2108.06084) is a pacing
function over a few bucketed lengths, so the train step compiles once per bucket, not once per step.
"""

from __future__ import annotations

import math

import numpy as np

from leanjax.data.source import Source

PACINGS = ("linear", "root", "step", "exponential", "none")


def competence(step: int, total_steps: int, *, kind: str = "root", c0: float = 0.1, power: float = 2.0,
               num_stages: int = 4) -> float:
    """Fraction of the (easiest-first) data available at `step`: `c0` at step 0, 1 from `total_steps` on.

    - `linear`: c0 + (1 - c0) t/T.
    - `root`: (c0^p + (1 - c0^p) t/T)^(1/p) (Platanios' root-p; p=2 is their "sqrt"): fast early growth.
    - `step`: `num_stages` equal plateaus c0, ..., rising to 1 at T.
    - `exponential`: c0 * (1/c0)^(t/T): slow early, fast late (Hacohen & Weinshall 2019's growth).
    - `none`: always 1 (no curriculum).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 < c0 <= 1.0:
        raise ValueError(f"c0 must be in (0, 1], got {c0}")
    t = min(max(step, 0), total_steps) / total_steps
    if kind == "linear":
        c = c0 + (1.0 - c0) * t
    elif kind == "root":
        c = (c0 ** power + (1.0 - c0 ** power) * t) ** (1.0 / power)
    elif kind == "step":
        c = 1.0 if t >= 1.0 else c0 + (1.0 - c0) * math.floor(t * num_stages) / num_stages
    elif kind == "exponential":
        c = c0 * (1.0 / c0) ** t
    elif kind == "none":
        c = 1.0
    else:
        raise ValueError(f"unknown pacing {kind!r}: use one of {PACINGS}")
    return min(1.0, c)


def difficulty_order(difficulty: np.ndarray, *, anti: bool = False) -> np.ndarray:
    """Example ids sorted easiest first (lowest difficulty), or hardest first with `anti`. Stable."""
    difficulty = np.asarray(difficulty)
    if difficulty.ndim != 1 or not np.all(np.isfinite(difficulty)):
        raise ValueError(f"difficulty must be a finite 1-D array, got shape {difficulty.shape}")
    return np.argsort(-difficulty if anti else difficulty, kind="stable")


def random_order(num_examples: int, seed: int) -> np.ndarray:
    """The control: a random order, paced the same way as a scored one."""
    return np.random.default_rng(seed).permutation(num_examples)


class CurriculumSampler:
    """Batches drawn uniformly from the `competence(step) * N` first examples of `order`.

    Batch `k` is a pure function of `(seed, k)`, so the whole iterator state is `{"step": k}`: `fit`
    checkpoints and resumes it like grain's iterators (`get_state` / `set_state`). Each batch is a dict
    of stacked arrays with the example ids under `index`.
    """

    def __init__(self, source: Source, order: np.ndarray, *, batch_size: int, total_steps: int, seed: int,
                 pacing: str = "root", c0: float = 0.1, **pacing_kwargs):
        order = np.asarray(order)
        if sorted(order.tolist()) != list(range(len(source))):
            raise ValueError(f"order must be a permutation of the {len(source)} example ids")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        competence(0, total_steps, kind=pacing, c0=c0, **pacing_kwargs)  # validates the arguments
        self.source, self.order, self.batch_size, self.seed = source, order, batch_size, seed
        self.total_steps, self.pacing, self.c0, self.pacing_kwargs = total_steps, pacing, c0, pacing_kwargs
        self.step = 0

    def available(self, step: int) -> int:
        c = competence(step, self.total_steps, kind=self.pacing, c0=self.c0, **self.pacing_kwargs)
        return max(self.batch_size, min(len(self.order), math.ceil(c * len(self.order))))

    def indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return self.order[rng.integers(0, self.available(step), self.batch_size)]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        ids = self.indices(self.step)
        self.step += 1
        examples = [self.source[int(i)] for i in ids]
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        return {"index": ids.astype(np.int32), **batch}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def length_schedule(step: int, total_steps: int, buckets: tuple[int, ...], *, kind: str = "linear",
                    c0: float | None = None) -> int:
    """Sequence length at `step` for length warmup: the pacing `competence` of the longest bucket,
    rounded up to the next bucket, so only `len(buckets)` shapes ever reach the compiler."""
    buckets = tuple(sorted(buckets))
    if not buckets or buckets[0] < 1:
        raise ValueError(f"buckets must be positive lengths, got {buckets}")
    c = competence(step, total_steps, kind=kind, c0=buckets[0] / buckets[-1] if c0 is None else c0)
    wanted = c * buckets[-1]
    return next(b for b in buckets if b >= wanted - 1e-9)


def split_windows(batch: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """Cut `[B, T]` LM windows into `[B*T/seq_len, seq_len]` ones: the same tokens, shorter contexts,
    so a length-warmup step sees exactly as many tokens as a full-length one."""
    out = {}
    for k, v in batch.items():
        b, t = v.shape[:2]
        if t % seq_len:
            raise ValueError(f"{k} has length {t}, not a multiple of seq_len={seq_len}")
        out[k] = v.reshape(b * (t // seq_len), seq_len, *v.shape[2:])
    return out

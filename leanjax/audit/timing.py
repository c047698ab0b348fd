"""Wall-clock timing of compiled programs: one program (`time_step`), or several side by side
(`time_interleaved`), the way every leanjax comparison is timed.

Shared machines are noisy: a load that comes and goes slows whatever runs at that moment. Timing the
variants in turn, round after round, makes that load hit every variant alike, so their ratios stay
meaningful even when the absolute times do not. Every call is waited for with `jax.block_until_ready`;
a program that donates its arguments (a train step donating its state) gets a fresh copy of them on each
call, made outside the timed region.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call wall times after warm-up; each call waited for with `block_until_ready`."""

    median_s: float
    min_s: float
    iters: int

    @classmethod
    def from_times(cls, times: Sequence[float]) -> Timing:
        return cls(statistics.median(times), min(times), len(times))


def _fresh(tree):
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def _any_deleted(tree) -> bool:
    return any(x.is_deleted() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))


def _donates(fn: Callable, args: tuple, kwargs: dict) -> bool:
    """Calls `fn` once on a copy of its arguments (a warm-up call: it compiles) and tells whether the
    copy was donated (deleted)."""
    probe = _fresh((args, kwargs))
    jax.block_until_ready(fn(*probe[0], **probe[1]))
    return _any_deleted(probe)


def _timed_call(fn: Callable, args: tuple, kwargs: dict, donates: bool) -> float:
    a, kw = _fresh((args, kwargs)) if donates else (args, kwargs)
    jax.block_until_ready((a, kw))
    start = time.perf_counter()
    jax.block_until_ready(fn(*a, **kw))
    return time.perf_counter() - start


def time_step(fn: Callable, *args, warmup: int = 2, iters: int = 10, **kwargs) -> Timing:
    """Times `fn(*args, **kwargs)`: `iters` calls after `warmup` calls (the first compiles).

    The caller's arrays are never consumed: if `fn` donates its inputs, each call gets a fresh copy of
    the arguments, which holds a second copy of them in memory while timing.

    Args:
      fn: the function to time (jitted or compiled; a plain Python function works too).
      *args: its positional arguments.
      warmup: untimed calls first (at least one is made, to learn whether `fn` donates).
      iters: timed calls.
      **kwargs: its keyword arguments.

    Returns:
      A `Timing`: the median and minimum seconds per call, and the number of timed calls.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    donates = _donates(fn, args, kwargs)
    times = [_timed_call(fn, args, kwargs, donates) for _ in range(max(warmup - 1, 0) + iters)]
    return Timing.from_times(times[max(warmup - 1, 0):])


def time_interleaved(fns: Mapping[Hashable, tuple[Callable, tuple] | Callable[[], Any]], *, repeats: int = 5,
                     iters: int = 1, warmup: int = 1) -> dict[Hashable, float]:
    """Median seconds per call of each variant, calling the variants in turn, round after round.

    Each round calls every variant `iters` times in a row (their median is the round's time); a variant's
    result is the median over `repeats` rounds of those. `warmup` untimed rounds come first, so
    compilation is outside the timed region.

    Args:
      fns: name -> `(fn, args)` (timed as `fn(*args)`; args a tuple or list, copied for each call if `fn`
        donates them) or a zero-argument callable (e.g. a PyTorch step returning a float that waits for the device).
      repeats: timed rounds (>= 1).
      iters: calls per variant per round (>= 1).
      warmup: untimed rounds first (at least one call per variant is made, to learn what it donates).

    Returns:
      name -> median seconds per call, in the order of `fns`.
    """
    if repeats < 1 or iters < 1:
        raise ValueError(f"repeats and iters must be >= 1, got repeats={repeats}, iters={iters}")
    runs = {}
    for key, v in fns.items():
        fn, args = v if isinstance(v, tuple) and len(v) == 2 else (v, ())
        if not callable(fn) or not isinstance(args, (tuple, list)):
            raise TypeError(f"time_interleaved: variant {key!r} must be (fn, args tuple) or a callable, "
                            f"got {type(v).__name__}")
        if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(args)):
            raise ValueError(f"cannot time {key!r}: its arguments are abstract (jax.ShapeDtypeStruct); "
                             "give concrete arrays")
        runs[key] = (fn, tuple(args))
    donates = {key: _donates(fn, args, {}) for key, (fn, args) in runs.items()}
    rounds: dict[Hashable, list[float]] = {key: [] for key in runs}
    for r in range(max(warmup - 1, 0) + repeats):
        for key, (fn, args) in runs.items():
            times = [_timed_call(fn, args, {}, donates[key]) for _ in range(iters)]
            if r >= max(warmup - 1, 0):
                rounds[key].append(statistics.median(times))
    return {key: statistics.median(t) for key, t in rounds.items()}

"""The `auto` remat policy: the fastest gradient-checkpointing policy whose compiled step fits a budget.

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost",
https://arxiv.org/abs/1604.06174) trades recomputation for activation memory; the named
`jax.checkpoint` policies of `leanjax.models.remat` say which residuals the backward pass keeps. Which
one is best depends on the model, the batch and the backend (on XLA CPU remat saves nothing on unrolled
layers), so the choice is made from compiled programs, not rules:

1. `measure` compiles the step under each policy (`build_step(policy, batch) -> (jitted, args)`) and
   reads its peak from `memory_analysis()` (`Memory.peak`: arguments + outputs + temporaries - aliased);
2. `pick` drops the candidates over the budget and ranks the rest by measured step time (alternating
   calls, so a loaded machine slows every candidate alike) or, untimed, by compiled FLOPs (recompute
   included), and says why in `Choice.reason`;
3. `choose_remat` does both; with `batch_sizes` every policy runs at the largest listed batch that
   fits and the winner has the highest throughput (examples/s).

`max_batch` finds the largest batch whose compiled step fits a budget under one policy (doubling, then
bisection), compiling only: nothing runs, so the arguments may be `jax.ShapeDtypeStruct`s.
Peak memory is assumed to grow with the batch, which holds for a train step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax

from leanjax.audit.compiled import Memory
from leanjax.audit.hlo import analyze
from leanjax.audit.timing import time_interleaved
from leanjax.models.remat import validate_policy_name

# build_step(policy, batch) -> (jitted step, its arguments). `batch=None` means the builder's own batch.
StepBuilder = Callable[[str, "int | None"], tuple[Callable, tuple]]

_MIB = 2**20


class NoPolicyFits(ValueError):
    """No candidate's compiled step fits the memory budget; the message gives the smallest peak."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One policy's compiled step: its peak memory, compiled FLOPs and (if timed) median step time."""

    policy: str
    batch: int | None
    peak_bytes: int
    flops: float  # compiled FLOPs per step, loops expanded, remat recompute included
    step_time_s: float | None = None

    def examples_per_s(self) -> float | None:
        if self.step_time_s is None or self.batch is None:
            return None
        return self.batch / self.step_time_s


@dataclasses.dataclass(frozen=True)
class Choice:
    """The chosen policy and batch, why, and every candidate considered (`table`)."""

    policy: str
    batch: int | None
    peak_bytes: int
    step_time_s: float | None
    budget_bytes: int
    reason: str
    table: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BatchFit:
    """The largest batch whose compiled step fits, its peak, and every (batch, peak) compiled."""

    policy: str
    batch: int
    peak_bytes: int
    tried: tuple[tuple[int, int], ...]


def _compile(build_step: StepBuilder, policy: str, batch: int | None):
    fn, args = build_step(policy, batch)
    if not hasattr(fn, "lower"):
        raise TypeError(f"build_step({policy!r}, {batch}) must return a jitted function, got {type(fn).__name__}")
    return fn.lower(*args).compile(), args


def _candidate(compiled: jax.stages.Compiled, policy: str, batch: int | None) -> Candidate:
    return Candidate(policy, batch, Memory.of(compiled).peak, analyze(compiled.as_text()).flops)


def measure(build_step: StepBuilder, policies: Sequence[str], batch: int | None = None, *,
            timing: bool = True, rounds: int = 5) -> tuple[Candidate, ...]:
    """Every policy's compiled step at `batch`: peak memory, FLOPs and, with `timing`, step time."""
    _check_policies(policies)
    compiled = {p: _compile(build_step, p, batch) for p in policies}
    table = [_candidate(c, p, batch) for p, (c, _) in compiled.items()]
    if not timing:
        return tuple(table)
    times = time_interleaved(compiled, repeats=rounds)
    return tuple(dataclasses.replace(c, step_time_s=times[c.policy]) for c in table)


def _check_policies(policies: Sequence[str]) -> None:
    if not policies:
        raise ValueError("give at least one remat policy")
    for p in policies:
        validate_policy_name(p)


def _mib(n: float) -> str:
    return f"{n / _MIB:.1f} MiB"


def pick(candidates: Sequence[Candidate], budget_bytes: int) -> Choice:
    """The best candidate whose peak fits `budget_bytes`, with the reason; pure (nothing compiles).

    Ranked by measured throughput (examples/s when the candidates' batches are known, else step
    time) when every fitting candidate was timed, otherwise by compiled FLOPs per example.
    Raises `NoPolicyFits` when none fits.
    """
    if not candidates:
        raise ValueError("no candidates to pick from")
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    fits = [c for c in candidates if c.peak_bytes <= budget_bytes]
    over = [c for c in candidates if c.peak_bytes > budget_bytes]
    if not fits:
        least = min(candidates, key=lambda c: c.peak_bytes)
        raise NoPolicyFits(
            f"no remat policy fits the budget of {_mib(budget_bytes)}: the smallest compiled peak is "
            f"{least.policy!r}{_at(least)} with {_mib(least.peak_bytes)}; raise the budget, shrink the "
            "batch, or add a policy that saves less (e.g. 'nothing')")
    per_example = lambda c, x: x / (c.batch or 1)  # noqa: E731
    timed = all(c.step_time_s is not None for c in fits)
    if timed:
        best = min(fits, key=lambda c: per_example(c, c.step_time_s))
        unit = "s/example" if any(c.batch for c in fits) else "s/step"
        score = lambda c: f"{per_example(c, c.step_time_s):.3g} {unit}"  # noqa: E731
        how = "the fastest (measured, calls alternating)"
    else:
        best = min(fits, key=lambda c: per_example(c, c.flops))
        score = lambda c: f"{per_example(c, c.flops):.3g} FLOP/{'example' if c.batch else 'step'}"  # noqa: E731
        how = "the fewest compiled FLOPs (untimed)"
    others = ", ".join(f"{c.policy!r}{_at(c)} {score(c)}" for c in fits if c is not best)
    counted = f"{len(fits)} policies" if len(fits) > 1 else "one policy"
    reason = (f"{best.policy!r}{_at(best)}: {how} of the {counted} whose compiled peak fits "
              f"{_mib(budget_bytes)} ({_mib(best.peak_bytes)}, {score(best)}"
              + (f"; vs {others}" if others else "") + ")")
    if over:
        reason += "; over budget: " + ", ".join(f"{c.policy!r}{_at(c)} {_mib(c.peak_bytes)}" for c in over)
    return Choice(best.policy, best.batch, best.peak_bytes, best.step_time_s, int(budget_bytes), reason,
                  tuple(candidates))


def _at(c: Candidate) -> str:
    return f" at batch {c.batch}" if c.batch is not None else ""


def choose_remat(build_step: StepBuilder, policies: Sequence[str], budget_bytes: int,
                 batch_sizes: Sequence[int] | None = None, *, timing: bool = True, rounds: int = 5) -> Choice:
    """The `auto` policy: compile every policy, drop those over `budget_bytes`, time the rest, pick.

    Without `batch_sizes` every policy runs at the builder's batch (`build_step(policy, None)`) and the
    fastest step wins. With `batch_sizes`, each policy runs at the largest listed batch that fits and
    the highest throughput wins. `timing=False` ranks by compiled FLOPs instead (nothing runs, so the
    builder may return abstract arguments). Raises `NoPolicyFits` when nothing fits.
    """
    _check_policies(policies)
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    compiled: dict[str, tuple] = {}
    table: list[Candidate] = []
    for policy in policies:
        # Largest batch first: the first that fits is the one this policy runs at.
        for batch in sorted(batch_sizes, reverse=True) if batch_sizes else [None]:
            exe, args = _compile(build_step, policy, batch)
            candidate = _candidate(exe, policy, batch)
            if candidate.peak_bytes <= budget_bytes:
                compiled[policy] = (exe, args)
                break
        table.append(candidate)  # the fitting batch, or the smallest tried when none fits
    if timing and compiled:
        times = time_interleaved(compiled, repeats=rounds)
        table = [dataclasses.replace(c, step_time_s=times.get(c.policy)) for c in table]
    return pick(table, budget_bytes)


def max_batch(build_step: StepBuilder, policy: str, budget_bytes: int, *, start: int = 8, limit: int = 4096,
              multiple_of: int = 1) -> BatchFit:
    """The largest batch (a multiple of `multiple_of`, at most `limit`) whose compiled step fits.

    Doubles from `start` until the peak exceeds the budget (or halves, if `start` does not fit), then
    bisects between the last batch that fits and the first that does not. Compiles about
    log2(limit / multiple_of) programs; runs none.
    """
    validate_policy_name(policy)
    if not 0 < multiple_of <= start <= limit:
        raise ValueError(f"need 0 < multiple_of <= start <= limit, got {multiple_of}, {start}, {limit}")
    tried: dict[int, int] = {}

    def peak(batch: int) -> int:
        if batch not in tried:
            tried[batch] = _candidate(_compile(build_step, policy, batch)[0], policy, batch).peak_bytes
        return tried[batch]

    units = lambda b: b // multiple_of  # noqa: E731  # search over units of `multiple_of`
    lo, hi = None, None  # largest known to fit, smallest known not to (in units)
    b = units(start)
    if peak(b * multiple_of) <= budget_bytes:
        while lo is None or (hi is None and lo < units(limit)):
            lo, b = b, min(2 * b, units(limit))
            if b == lo:
                break
            if peak(b * multiple_of) > budget_bytes:
                hi = b
    else:
        hi = b
        while lo is None and b > 1:
            b //= 2
            if peak(b * multiple_of) <= budget_bytes:
                lo = b
            else:
                hi = b
        if lo is None:
            raise NoPolicyFits(f"remat policy {policy!r}: even batch {multiple_of} needs "
                               f"{_mib(tried[multiple_of])}, over the budget of {_mib(budget_bytes)}")
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid * multiple_of) <= budget_bytes:
            lo = mid
        else:
            hi = mid
    batch = lo * multiple_of
    return BatchFit(policy, batch, tried[batch], tuple(sorted(tried.items())))

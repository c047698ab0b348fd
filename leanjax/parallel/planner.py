"""The auto mesh planner: try every factorisation of the devices, compiled ahead of time, and pick one.

For each candidate mesh `build(mesh) -> (jitted_step, args)` is lowered and compiled (no step runs),
and the compiled program is read: per-device peak memory (`memory_analysis`: arguments + outputs +
temporaries - aliased), collective operand bytes and count per step and FLOPs per device (the optimized
HLO, via `leanjax.audit`). Candidates are ranked by

1. memory fit (peak <= `memory_limit`; candidates that do not fit are never chosen),
2. an estimated step time, a roofline sum `flops / peak + bytes / memory_bw + collective_bytes / link_bw
   + collectives * latency` on the `Hardware` given,
3. then the `measure_top` best by estimate are run for a few steps each (alternating, median) and the
   fastest measured wins: the estimate prunes, the measurement decides.

The choice is cached in a JSON file keyed by the caller's key, the abstract shapes of the arguments and
the devices, so a second run with the same (model, batch, devices) skips the search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from leanjax.audit import Memory, analyze, time_interleaved
from leanjax.parallel.mesh import AXES, factorizations, make_mesh, spec_str
from leanjax.parallel.multihost import agree

BuildFn = Callable[[jax.sharding.Mesh], tuple[Callable, tuple]]


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the estimate divides by, per device. Rough figures are fine: measurement decides the top."""

    flops_per_s: float
    memory_bytes_per_s: float
    link_bytes_per_s: float
    collective_latency_s: float

    @classmethod
    def for_platform(cls, platform: str) -> Hardware:
        # Orders of magnitude per device: a v5e-class TPU chip, an H100-class GPU, and one of several
        # simulated CPU devices sharing a few cores (where a collective is a rendezvous of threads).
        return {"tpu": cls(2e14, 8e11, 1e11, 5e-6), "gpu": cls(5e14, 3e12, 2e11, 1e-5)}.get(
            platform, cls(2e10, 5e9, 5e9, 5e-5))


@dataclasses.dataclass(frozen=True)
class Candidate:
    mesh: dict[str, int]
    compiled: bool
    error: str | None = None
    memory_per_device: int = 0
    fits: bool = False
    flops_per_device: float = 0.0
    bytes_per_device: float = 0.0
    collective_bytes: float = 0.0
    collectives: int = 0
    estimated_step_s: float = float("inf")
    measured_step_s: float | None = None
    compile_s: float = 0.0

    @property
    def name(self) -> str:
        return spec_str(self.mesh)


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh: dict[str, int]
    candidates: tuple[Candidate, ...]  # best first
    reason: str
    cached: bool = False

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.mesh == self.mesh)

    def table(self) -> str:
        head = f"{'mesh':<26}{'fits':>5}{'peak MiB/dev':>14}{'coll. KiB':>11}{'#coll':>7}" \
               f"{'GFLOP/dev':>11}{'est ms':>9}{'meas ms':>9}"
        rows = [head, "-" * len(head)]
        for c in self.candidates:
            if not c.compiled:
                rows.append(f"{c.name:<26} failed to compile: {c.error}")
                continue
            meas = f"{c.measured_step_s * 1e3:9.2f}" if c.measured_step_s is not None else f"{'-':>9}"
            mark = " <- chosen" if c.mesh == self.mesh else ""
            rows.append(f"{c.name:<26}{'yes' if c.fits else 'NO':>5}{c.memory_per_device / 2**20:14.2f}"
                        f"{c.collective_bytes / 2**10:11.1f}{c.collectives:7d}{c.flops_per_device / 1e9:11.3f}"
                        f"{c.estimated_step_s * 1e3:9.2f}{meas}{mark}")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"mesh": self.mesh, "reason": self.reason,
                "candidates": [dataclasses.asdict(c) for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], cached: bool = False) -> Plan:
        return cls(mesh=dict(d["mesh"]), candidates=tuple(Candidate(**c) for c in d["candidates"]),
                   reason=d["reason"], cached=cached)


def fingerprint(key: str, args: Any, devices: Sequence[jax.Device], axes: Sequence[str]) -> str:
    """A cache key for (model, batch, devices): the caller's key, the arguments' tree structure, shapes
    and dtypes, the device kind and count, and the axes tried."""
    shapes = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), args)
    d = devices[0]
    text = json.dumps([key, str(jax.tree.structure(args)), jax.tree.leaves(shapes),
                       f"{d.platform}:{getattr(d, 'device_kind', '')}", len(devices), list(axes),
                       jax.__version__], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def analyse_candidate(build: BuildFn, shape: dict[str, int], devices: Sequence[jax.Device],
                      hardware: Hardware, memory_limit: int | None) -> tuple[Candidate, Any]:
    """Compile one candidate ahead of time and read its cost; `(candidate, (compiled, args))`."""
    t0 = time.perf_counter()
    try:
        fn, args = build(make_mesh(shape, devices))
        compiled = fn.lower(*args).compile()
    except Exception as e:  # noqa: BLE001 - a candidate that cannot compile is reported, not fatal
        return Candidate(shape, compiled=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"), None
    compile_s = time.perf_counter() - t0
    memory = Memory.of(compiled).peak
    hlo = analyze(compiled.as_text())
    coll_bytes = sum(c.operand_bytes for c in hlo.collectives.values())
    coll_count = sum(c.count for c in hlo.collectives.values())
    estimate = (hlo.flops / hardware.flops_per_s + hlo.bytes_accessed / hardware.memory_bytes_per_s
                + coll_bytes / hardware.link_bytes_per_s + coll_count * hardware.collective_latency_s)
    fits = memory_limit is None or memory <= memory_limit
    return Candidate(shape, compiled=True, memory_per_device=int(memory), fits=fits, flops_per_device=hlo.flops,
                     bytes_per_device=hlo.bytes_accessed, collective_bytes=coll_bytes, collectives=coll_count,
                     estimated_step_s=estimate, compile_s=compile_s), (compiled, args)


def measure(programs: Sequence[tuple[Callable, tuple]], *, steps: int = 5, rounds: int = 3) -> list[float]:
    """Median step time of each `(compiled, args)`, alternating between them `rounds` times so that
    drift on a shared machine hits every candidate alike."""
    medians = time_interleaved(dict(enumerate(programs)), repeats=rounds, iters=steps)
    return [medians[i] for i in range(len(programs))]


def _reason(ranked: list[Candidate], memory_limit: int | None) -> str:
    best = ranked[0]
    parts = [f"{best.name} won"]
    fitting = [c for c in ranked if c.compiled and c.fits]
    out = [c for c in ranked if c.compiled and not c.fits]
    if memory_limit is not None:
        parts.append(f"it fits ({best.memory_per_device / 2**20:.1f} MiB/device <= limit "
                     f"{memory_limit / 2**20:.1f} MiB; {len(out)} candidate(s) did not)")
    measured = [c for c in fitting if c.measured_step_s is not None]
    if len(measured) > 1:
        second = measured[1]
        parts.append(f"fastest measured of the top {len(measured)} by estimate: {best.measured_step_s * 1e3:.2f} ms "
                     f"vs {second.name} {second.measured_step_s * 1e3:.2f} ms "
                     f"(+{second.measured_step_s / best.measured_step_s - 1:.0%})")
    elif len(fitting) > 1:
        second = fitting[1]
        parts.append(f"lowest estimated step time: {best.estimated_step_s * 1e3:.2f} ms vs {second.name} "
                     f"{second.estimated_step_s * 1e3:.2f} ms")
    parts.append(f"collectives {best.collective_bytes / 2**10:.1f} KiB in {best.collectives} ops per step, "
                 f"peak {best.memory_per_device / 2**20:.2f} MiB/device")
    return "; ".join(parts)


def survey(build: BuildFn, devices: Sequence[jax.Device], *, axes: Sequence[str] = AXES,
           memory_limit: int | None = None, hardware: Hardware | None = None) -> list[tuple[Candidate, Any]]:
    """Every factorisation of `devices` over `axes`, compiled and read: `[(candidate, program)]` in
    factorisation order (`program` is `(compiled, args)`, None when it failed to compile)."""
    hardware = hardware or Hardware.for_platform(devices[0].platform)
    return [analyse_candidate(build, shape, devices, hardware, memory_limit)
            for shape in factorizations(len(devices), axes)]


def decide(surveyed: Sequence[tuple[Candidate, Any]], *, memory_limit: int | None = None, measure_top: int = 3,
           steps: int = 5, rounds: int = 3) -> Plan:
    """Rank surveyed candidates (fit, then estimate), time the `measure_top` best and pick the fastest."""
    cands = [c for c, _ in surveyed]
    if not any(c.compiled for c in cands):
        raise RuntimeError("no mesh candidate compiled:\n" + "\n".join(f"  {c.name}: {c.error}" for c in cands))
    if not any(c.compiled and c.fits for c in cands):
        smallest = min((c for c in cands if c.compiled), key=lambda c: c.memory_per_device)
        raise RuntimeError(f"no mesh fits in {memory_limit / 2**20:.1f} MiB per device; the smallest needs "
                           f"{smallest.memory_per_device / 2**20:.1f} MiB ({smallest.name}). Use rematerialisation, "
                           "a smaller batch, or more devices.")
    order = sorted(range(len(cands)), key=lambda i: (not cands[i].compiled, not cands[i].fits,
                                                     cands[i].estimated_step_s, cands[i].collective_bytes))
    top = [i for i in order if cands[i].compiled and cands[i].fits][:measure_top]
    ranked = [cands[i] for i in order]
    if top:
        # Every process must pick the same mesh: process 0's timings decide.
        times = [float(t) for t in agree(np.asarray(measure([surveyed[i][1] for i in top], steps=steps,
                                                            rounds=rounds)))]
        timed = sorted((dataclasses.replace(cands[i], measured_step_s=t) for i, t in zip(top, times)),
                       key=lambda c: c.measured_step_s)
        ranked = timed + [cands[i] for i in order if i not in top]
    return Plan(mesh=ranked[0].mesh, candidates=tuple(ranked), reason=_reason(ranked, memory_limit))


def plan_mesh(build: BuildFn, devices: Sequence[jax.Device] | None = None, *, axes: Sequence[str] = AXES,
              memory_limit: int | None = None, hardware: Hardware | None = None, measure_top: int = 3,
              steps: int = 5, rounds: int = 3, cache_path: str | os.PathLike | None = None, key: str = "",
              verbose: bool = True) -> Plan:
    """Choose a mesh shape for `build(mesh) -> (jitted_step, args)` over `devices` (default: all).

    `args` may be concrete arrays placed for that mesh (needed when `measure_top > 0`; the step's first
    argument may be donated) or `jax.ShapeDtypeStruct`s with shardings (estimate only, `measure_top=0`).
    `memory_limit` (bytes per device) defaults to the device's reported limit (None on CPU: no limit).
    With `cache_path`, a plan for the same `key`, argument shapes and devices is read back instead of
    searched again (`Plan.cached`).
    """
    devices = list(jax.devices() if devices is None else devices)
    if memory_limit is None:
        memory_limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    cache, cache_id = {}, None
    if cache_path is not None:
        # The key needs the arguments' shapes, which do not depend on the mesh: build once to read them.
        _, probe_args = build(make_mesh({axes[0]: len(devices)}, devices))
        cache_id = fingerprint(key, probe_args, devices, axes)
        del probe_args
        if os.path.exists(cache_path):
            with open(cache_path) as f:
                cache = json.load(f)
        if cache_id in cache:
            plan = Plan.from_dict(cache[cache_id], cached=True)
            if verbose:
                print(f"[planner] cached plan {cache_id} from {cache_path}: {spec_str(plan.mesh)}", flush=True)
            return plan
    surveyed = survey(build, devices, axes=axes, memory_limit=memory_limit, hardware=hardware)
    plan = decide(surveyed, memory_limit=memory_limit, measure_top=measure_top, steps=steps, rounds=rounds)
    del surveyed  # the compiled programs and their arguments
    if verbose:
        print(f"[planner] {len(plan.candidates)} meshes over {len(devices)} devices\n{plan.table()}\n"
              f"[planner] {plan.reason}", flush=True)
    if cache_id is not None:
        save_plan(cache_path, cache_id, plan)
    return plan


def save_plan(cache_path: str | os.PathLike, cache_id: str, plan: Plan) -> None:
    """Add `plan` to the JSON cache file (written to a temporary file, then renamed into place)."""
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    cache[cache_id] = plan.to_dict()
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    tmp = f"{cache_path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(cache, f, indent=1)
    os.replace(tmp, cache_path)


def choose_mesh(spec: str | Mapping[str, int], build: BuildFn, devices: Sequence[jax.Device] | None = None,
                **plan_kwargs: Any) -> tuple[jax.sharding.Mesh, Plan | None]:
    """`spec` is `"auto"` (plan it) or a mesh spec such as `"data=-1,tensor=2"`; returns `(mesh, plan)`."""
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        plan = plan_mesh(build, devices, **plan_kwargs)
        return make_mesh(plan.mesh, devices), plan
    return make_mesh(spec, devices), None

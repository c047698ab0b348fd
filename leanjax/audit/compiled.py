"""`audit_compiled`: one jitted step, compiled ahead of time, measured and explained.

Owns the `Audit` record (FLOPs, bytes, memory, kernels, collectives, time, MFU/HFU, dollars) and its
JSON and text forms. The static figures come from the compiled executable (`memory_analysis()`,
`cost_analysis()`) and from `leanjax.audit.hlo`'s reading of its optimized HLO; time and peak are
measured in this process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from leanjax.audit.hardware import Peak, UnknownDevice, measure_peak_flops, published_peak
from leanjax.audit.hlo import HloAnalysis, analyze
from leanjax.audit.prices import Dollars, PriceTable
from leanjax.audit.table import audit_table
from leanjax.audit.timing import Timing, time_step


@dataclasses.dataclass(frozen=True)
class Memory:
    """`Compiled.memory_analysis()` per device, in bytes.

    `peak` = arguments + outputs + temporaries - aliased: the live set at the worst point, assuming
    all arguments stay alive. (`peak_memory_in_bytes` leaves temporaries out on CPU.)
    """

    arguments: int
    outputs: int
    temporaries: int
    aliased: int  # output buffers that reuse a donated argument's buffer
    generated_code: int
    host_arguments: int = 0
    host_outputs: int = 0
    host_temporaries: int = 0

    @classmethod
    def of(cls, compiled: jax.stages.Compiled) -> Memory:
        m = compiled.memory_analysis()
        return cls(
            arguments=m.argument_size_in_bytes,
            outputs=m.output_size_in_bytes,
            temporaries=m.temp_size_in_bytes,
            aliased=m.alias_size_in_bytes,
            generated_code=m.generated_code_size_in_bytes,
            host_arguments=m.host_argument_size_in_bytes,
            host_outputs=m.host_output_size_in_bytes,
            host_temporaries=m.host_temp_size_in_bytes,
        )

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased


@dataclasses.dataclass(frozen=True)
class Audit:
    """What one compiled step costs. FLOPs, bytes and memory are per device, for one step."""

    name: str
    platform: str
    device_kind: str
    n_devices: int
    compile_s: float | None  # None when given an already compiled program
    flops_xla: float  # cost_analysis(): loop bodies once, library calls (cuBLAS) left out
    flops_once: float  # the HLO counter with loop bodies once: equals flops_xla but for library calls
    flops: float  # the HLO counter, loops expanded: hardware FLOPs, remat recompute included
    flops_method: str
    transcendentals: float
    bytes_accessed_xla: float
    bytes_accessed: float  # the HLO counter, loops expanded
    memory: Memory
    hlo: HloAnalysis
    model_flops: float | None = None  # analytic, one step over all devices
    timing: Timing | None = None
    peak: Peak | None = None  # the denominator of MFU and HFU
    published_peak: Peak | None = None
    dollars: Dollars | None = None

    # ---- derived figures

    @property
    def model_flops_per_device(self) -> float | None:
        return self.model_flops / self.n_devices if self.model_flops is not None else None

    @property
    def model_to_hardware(self) -> float | None:
        """Analytic over compiled FLOPs: below 1 when the program recomputes or does extra work."""
        m = self.model_flops_per_device
        return m / self.flops if m is not None and self.flops else None

    @property
    def hardware_flops_per_s(self) -> float | None:
        return self.flops / self.timing.median_s if self.timing else None

    @property
    def model_flops_per_s(self) -> float | None:
        m = self.model_flops_per_device
        return m / self.timing.median_s if self.timing and m is not None else None

    @property
    def mfu(self) -> float | None:
        rate = self.model_flops_per_s
        return rate / self.peak.flops_per_s if rate is not None and self.peak else None

    @property
    def mfu_published(self) -> float | None:
        """MFU against the published peak (None for devices without one)."""
        rate = self.model_flops_per_s
        return rate / self.published_peak.flops_per_s if rate is not None and self.published_peak else None

    @property
    def hfu(self) -> float | None:
        rate = self.hardware_flops_per_s
        return rate / self.peak.flops_per_s if rate is not None and self.peak else None

    @property
    def arithmetic_intensity(self) -> float | None:
        return self.flops / self.bytes_accessed if self.bytes_accessed else None

    def priced(
        self,
        prices: PriceTable | None = None,
        *,
        steps: int | None = None,
        requests_per_step: int | None = None,
        host_cores: int | None = None,
    ) -> Audit:
        """This audit with dollar figures from `prices` (default: the shipped table)."""
        if self.timing is None:
            raise ValueError(f"audit {self.name!r} has no measured step time to price: audit with iters > 0")
        dollars = Dollars.compute(
            prices or PriceTable.load(), self.device_kind, self.n_devices, self.timing.median_s,
            steps=steps, requests_per_step=requests_per_step, host_cores=host_cores,
        )
        return dataclasses.replace(self, dollars=dollars)

    # ---- output

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["memory"]["peak"] = self.memory.peak
        out["hlo"]["matmul_dtype"] = self.hlo.matmul_dtype
        for key in ("model_to_hardware", "hardware_flops_per_s", "model_flops_per_s", "mfu", "mfu_published",
                    "hfu", "arithmetic_intensity"):
            out[key] = getattr(self, key)
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})

    def table(self) -> str:
        return audit_table(self)


def _devices(compiled: jax.stages.Compiled) -> list[jax.Device]:
    shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
    devices = {d for s in shardings for d in s.device_set}
    return sorted(devices, key=lambda d: d.id) or jax.devices()[:1]


def _flops_method(hlo: HloAnalysis) -> str:
    method = "HLO counter (XLA's HloCostAnalysis rules"
    method += ", library matmuls included)" if hlo.library_flops_once else ")"
    if hlo.loops:
        trips = ", ".join(str(loop.trip_count if loop.trip_count is not None else "?") for loop in hlo.loops)
        method += f", {len(hlo.loops)} while loop(s) x trip counts [{trips}]"
    if hlo.unknown_trip_counts:
        method += f"; {hlo.unknown_trip_counts} unknown trip count(s) counted once: a lower bound"
    return method


def _compile(fn: Callable, args, kwargs, static_argnums, static_argnames, donate_argnums):
    """(compiled, callable to time, seconds to compile or None if given compiled)."""
    if isinstance(fn, jax.stages.Compiled):
        return fn, fn, None
    jitted = fn if hasattr(fn, "lower") else jax.jit(
        fn, static_argnums=static_argnums, static_argnames=static_argnames, donate_argnums=donate_argnums
    )
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    # Timing calls `jitted`, whose cache then holds this compilation: it is not compiled twice.
    return compiled, jitted, time.perf_counter() - start


def audit_compiled(
    fn: Callable | jax.stages.Compiled,
    *args,
    name: str | None = None,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    model_flops: float | None = None,
    iters: int = 10,
    warmup: int = 2,
    peak: Peak | float | None = None,
    measure_peak: bool = True,
    peak_sizes: Sequence[int] | None = None,
    **kwargs,
) -> Audit:
    """Compiles `fn(*args, **kwargs)` ahead of time and audits the program.

    `fn` may be a plain function (jitted here with `static_argnums`/`donate_argnums`), an already
    jitted function, or a `jax.stages.Compiled` (then `args` are its dynamic arguments).
    `model_flops` is the analytic cost of one step over all devices (see `leanjax.audit.flops`).
    With `iters > 0` the step is timed (the caller's donated arrays are copied, not consumed) and,
    unless `peak` is given, the device's matmul peak is measured in this run in the dtype the
    program multiplies in (`measure_peak=False` falls back to the published peak, if any).
    """
    compiled, runner, compile_s = _compile(fn, args, kwargs, static_argnums, static_argnames, donate_argnums)
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jaxlibs: one dict per program
    hlo = analyze(compiled.as_text())
    devices = _devices(compiled)
    kind = devices[0].device_kind
    dtype = hlo.matmul_dtype or "float32"
    try:
        published = published_peak(kind, dtype)
    except UnknownDevice:
        published = None

    timing = None
    if peak is not None:
        peak = peak if isinstance(peak, Peak) else Peak(float(peak), "given")
    if iters > 0:
        timing = time_step(runner, *args, warmup=warmup, iters=iters, **kwargs)
        if peak is None and measure_peak:
            peak = measure_peak_flops(dtype, sizes=peak_sizes, device=devices[0])
    return Audit(
        name=name or getattr(fn, "__name__", type(fn).__name__),
        platform=devices[0].platform,
        device_kind=kind,
        n_devices=len(devices),
        compile_s=compile_s,
        flops_xla=float(cost.get("flops", 0.0)),
        flops_once=hlo.flops_once,
        flops=hlo.flops,
        flops_method=_flops_method(hlo),
        transcendentals=hlo.transcendentals,
        bytes_accessed_xla=float(cost.get("bytes accessed", 0.0)),
        bytes_accessed=hlo.bytes_accessed,
        memory=Memory.of(compiled),
        hlo=hlo,
        model_flops=model_flops,
        timing=timing,
        peak=peak or published,
        published_peak=published,
    )

"""Plain-text rendering of audits: aligned rows with human units, no dependencies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leanjax.audit.compiled import Audit


def si(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' + unit (decimal prefixes)."""
    if value is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def size(n: float | None) -> str:
    """Bytes with binary prefixes."""
    if n is None:
        return "n/a"
    for factor, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {prefix}"
    return f"{n:.0f} B"


def seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def dollars(usd: float | None) -> str:
    if usd is None:
        return "n/a"
    return f"${usd:,.2f}" if abs(usd) >= 0.01 else f"${usd:.3g}"


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.3g}%"


def ratio(x: float | None, base: float | None) -> str:
    return "" if x is None or not base else f"{x / base:.2f}x"


def rows(sections: Sequence[tuple[str, Sequence[tuple[str, str, str]]]]) -> str:
    """Sections of (label, value, note) rows, labels and values in aligned columns."""
    every = [r for _, body in sections for r in body]
    w_label = max((len(r[0]) for r in every), default=0)
    w_value = max((len(r[1]) for r in every), default=0)
    lines = []
    for title, body in sections:
        lines.append(title)
        for label, value, note in body:
            lines.append(f"  {label:<{w_label}}  {value:>{w_value}}  {note}".rstrip())
    return "\n".join(lines)


def grid(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A table with a header row; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[k])) for row in [header, *body]) for k in range(len(header))]

    def line(row):
        cells = [f"{row[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def _counts(mapping) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(mapping.items(), key=lambda kv: -kv[1])) or "none"


def audit_table(a: Audit) -> str:
    h = a.hlo
    xla_note = "loop bodies counted once"
    if h.library_flops_once:
        xla_note += f"; leaves out {si(h.library_flops_once, 'FLOP')} in library calls ({_counts(h.custom_calls)})"
    compute = [
        ("FLOPs (XLA cost_analysis)", si(a.flops_xla, "FLOP"), xla_note),
        ("FLOPs (per step)", si(a.flops, "FLOP"), a.flops_method),
    ]
    if a.model_flops is not None:
        compute.append(("FLOPs (model, analytic)", si(a.model_flops_per_device, "FLOP"),
                        f"model / hardware {a.model_to_hardware:.3f}" if a.model_to_hardware else ""))
    matmul = sum(h.matmul_flops.values())
    compute += [
        ("matmul FLOPs", si(matmul, "FLOP"),
         ", ".join(f"{d} {percent(f / matmul)}" for d, f in h.matmul_flops.items()) if matmul else ""),
        ("transcendentals", si(a.transcendentals), ""),
        ("bytes accessed", size(a.bytes_accessed),
         f"XLA (bodies once) {size(a.bytes_accessed_xla)}; intensity {a.arithmetic_intensity or 0:.3g} FLOP/B"),
    ]
    m = a.memory
    memory = [
        ("arguments", size(m.arguments), ""),
        ("outputs", size(m.outputs), ""),
        ("temporaries", size(m.temporaries), ""),
        ("aliased (donated)", size(m.aliased), ""),
        ("peak", size(m.peak), "arguments + outputs + temporaries - aliased"),
        ("generated code", size(m.generated_code), ""),
    ]
    loops = "; ".join(
        f"{'  ' * loop.depth}{loop.op_name} x{loop.trip_count if loop.trip_count is not None else '?'}"
        for loop in h.loops
    )
    collectives = "; ".join(f"{k} x{c.count} ({size(c.operand_bytes)})" for k, c in h.collectives.items())
    program = [
        ("kernels", f"{h.kernels_per_step} / step", f"{h.kernels} in the program text"),
        ("fusions", str(sum(h.fusions.values())), _counts(h.fusions)),
        ("custom calls", str(sum(h.custom_calls.values())), _counts(h.custom_calls)),
        ("while loops", str(len(h.loops)), loops),
        ("collectives / step", str(sum(c.count for c in h.collectives.values())), collectives or "none"),
    ]
    sections = [
        (f"audit: {a.name}  [{a.device_kind} x{a.n_devices}, {a.platform}; compiled in {seconds(a.compile_s)}]"
         "\ncompute (per device, one step)", compute),
        ("memory (per device)", memory),
        ("program", program),
    ]
    if a.timing is not None:
        t = a.timing
        sections.append(("time", [
            ("step time", seconds(t.median_s), f"median of {t.iters} (min {seconds(t.min_s)})"),
            ("achieved", si(a.hardware_flops_per_s, "FLOP/s"), f"model {si(a.model_flops_per_s, 'FLOP/s')}"),
            ("peak", si(a.peak.flops_per_s, "FLOP/s") if a.peak else "n/a",
             a.peak.source if a.peak else "unknown device: measure it"),
            ("published peak", si(a.published_peak.flops_per_s, "FLOP/s") if a.published_peak else "n/a",
             a.published_peak.source if a.published_peak else "no published figure for this device"),
            ("MFU", percent(a.mfu), "model FLOPs / time / peak" if a.mfu is not None else "needs model_flops"),
            ("MFU (published peak)", percent(a.mfu_published), ""),
            ("HFU", percent(a.hfu), "compiled FLOPs (recompute included) / time / peak"),
        ]))
    if a.dollars is not None:
        d = a.dollars
        body = [("per hour", dollars(d.usd_per_hour), f"{a.device_kind} x{a.n_devices}"),
                ("per step", dollars(d.per_step), "")]
        if d.per_run is not None:
            body.append(("per run", dollars(d.per_run), f"{d.steps} steps"))
        if d.per_1k_requests is not None:
            body.append(("per 1k requests", dollars(d.per_1k_requests), f"{d.requests_per_step} requests / step"))
        sections.append((f"dollars ({d.table})", body))
    return rows(sections)

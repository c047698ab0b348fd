"""What-if rows: the same step after one intervention, each row an audit of the transformed step.

An intervention (LoRA, a remat policy, int8 serving...) is a function that builds the transformed
step and audits it; one that cannot be built for this step, or is not built yet, raises
`Unavailable` and becomes a row that says why. Predictions are therefore compiled programs, not
formulas: memory from `memory_analysis()`, FLOPs from the compiled HLO, time measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from leanjax.audit import table
from leanjax.audit.compiled import Audit
from leanjax.audit.prices import PriceTable


class Unavailable(Exception):
    """This intervention cannot be applied to this step (yet); the message says why."""


@dataclasses.dataclass(frozen=True)
class WhatIf:
    """One intervention: its audit, or the reason it has none."""

    name: str
    audit: Audit | None = None
    unavailable: str | None = None
    run_fraction: float = 1.0   # of the baseline run's steps (data-side rows: the same step, fewer or more of them)

    def __post_init__(self):
        if (self.audit is None) == (self.unavailable is None):
            raise ValueError(f"what-if {self.name!r}: give exactly one of audit and unavailable")

    def priced(self, prices: PriceTable, **kwargs) -> WhatIf:
        """This row with its audit priced (`Audit.priced`; a run's steps times `run_fraction`); an unavailable
        row stays as it is."""
        if self.audit is None:
            return self
        if kwargs.get("steps") is not None and self.run_fraction != 1.0:
            kwargs["steps"] = max(1, round(kwargs["steps"] * self.run_fraction))
        return dataclasses.replace(self, audit=self.audit.priced(prices, **kwargs))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unavailable": self.unavailable, "run_fraction": self.run_fraction,
                "audit": self.audit.to_dict() if self.audit else None}


def cheapest_fit(peak_bytes: float, prices: PriceTable) -> dict[str, Any] | None:
    """The cheapest priced accelerator whose memory holds `peak_bytes` (one device).

    Args:
      peak_bytes: a compiled step's peak.
      prices: the price table.

    Returns:
      `{"device", "usd_per_hour", "memory_gib"}`, or None when no priced device holds it.
    """
    from leanjax.audit.serving import DEVICE_MEMORY_GIB, devices_that_fit

    options = sorted((prices.prices[f].usd_per_hour, f) for f in devices_that_fit(peak_bytes)
                     if f in prices.prices and f in DEVICE_MEMORY_GIB)
    if not options:
        return None
    usd, family = options[0]
    return {"device": family, "usd_per_hour": usd, "memory_gib": DEVICE_MEMORY_GIB[family]}


def what_ifs_to_dict(baseline: Audit, rows: Sequence[WhatIf], prices: PriceTable) -> list[dict[str, Any]]:
    """Rows as JSON: each row's audit or reason, its ratios to `baseline`, and the cheapest device it fits.

    Args:
      baseline: the unchanged step's audit.
      rows: the what-if rows.
      prices: for the cheapest device that fits each row.

    Returns:
      One dict per row, the baseline first.
    """
    out = []
    for row in [WhatIf("baseline", baseline), *rows]:
        entry = row.to_dict()
        if row.audit is not None:
            entry["memory_ratio"] = row.audit.memory.peak / baseline.memory.peak
            entry["flops_ratio"] = row.audit.flops / baseline.flops if baseline.flops else None
            entry["cheapest_fit"] = cheapest_fit(row.audit.memory.peak, prices)
        out.append(entry)
    return out


def what_if(name: str, build: Callable[[], Audit]) -> WhatIf:
    """One what-if row: runs `build` (transform the step, then `audit_compiled` it).

    Args:
      name: the row's name.
      build: `() -> Audit`; raising `Unavailable` gives a row that says why.

    Returns:
      A `WhatIf` holding the audit or the reason (`failed: <error>` when building it raised anything else).
    """
    try:
        return WhatIf(name, build())
    except Unavailable as why:
        return WhatIf(name, unavailable=str(why))
    except Exception as error:  # noqa: BLE001 - one row that breaks must not take the whole report down
        first = (str(error).splitlines() or [""])[0]
        return WhatIf(name, unavailable=f"failed: {type(error).__name__}: {first}")


def what_if_table(baseline: Audit, rows: Sequence[WhatIf], prices: PriceTable | None = None) -> str:
    """A text table of what-if rows against a baseline.

    Args:
      baseline: the unchanged step's audit.
      rows: the `WhatIf` rows.
      prices: when given, a column with the cheapest priced accelerator whose memory holds each row's step.

    Returns:
      Peak memory, FLOPs, step time and dollars of each row, and their ratios to `baseline`; unavailable
      rows listed with their reasons.
    """

    def cost(a: Audit) -> float | None:
        if a.dollars is None:
            return None
        return a.dollars.per_run if a.dollars.per_run is not None else a.dollars.per_1k_requests

    unit = "$ / run" if baseline.dollars and baseline.dollars.per_run is not None else "$ / 1k req"
    header = ["intervention", "peak memory", "", "FLOPs", "", "step time", "", unit, ""]
    if prices is not None:
        header.append("cheapest fit")
    base_t = baseline.timing.median_s if baseline.timing else None
    body, missing = [], []
    for row in [WhatIf("baseline", baseline), *rows]:
        a = row.audit
        if a is None:
            missing.append(f"{row.name}: unavailable: {row.unavailable}")
            continue
        t = a.timing.median_s if a.timing else None
        body.append([
            row.name,
            table.size(a.memory.peak), table.ratio(a.memory.peak, baseline.memory.peak),
            table.si(a.flops, "FLOP"), table.ratio(a.flops, baseline.flops),
            table.seconds(t), table.ratio(t, base_t),
            table.dollars(cost(a)), table.ratio(cost(a), cost(baseline)),
        ])
        if prices is not None:
            fit = cheapest_fit(a.memory.peak, prices)
            body[-1].append(f"{fit['device']} ({fit['memory_gib']} GiB)" if fit else "none")
    return "\n".join([table.grid(header, body), *missing])

"""Dollars: a user-editable price table and what a run or a thousand requests cost under it.

The shipped table (`prices.json` beside this file) holds approximate on-demand list prices per
device-hour; every figure derived from it says which table and date it used. Edit that file, load
your own with `PriceTable.load(path)`, or override one entry with `PriceTable.with_price`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from leanjax.audit.hardware import device_family

_UNITS = ("device", "host-core")


@dataclasses.dataclass(frozen=True)
class Price:
    usd_per_hour: float
    per: Literal["device", "host-core"] = "device"


@dataclasses.dataclass(frozen=True)
class PriceTable:
    """Prices keyed by device family ("tpu-v5e", "h100-sxm", "cpu", ...)."""

    prices: Mapping[str, Price]
    as_of: str = ""
    source: str = "inline"

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> PriceTable:
        """Reads a price table (JSON, the layout of the shipped `prices.json`); None: the shipped one."""
        if path is None:
            resource = importlib.resources.files("leanjax.audit") / "prices.json"
            raw, source = json.loads(resource.read_text()), "leanjax/audit/prices.json"
        else:
            raw, source = json.loads(Path(path).read_text()), str(path)
        prices = {}
        for family, entry in raw["prices"].items():
            if entry.get("per", "device") not in _UNITS:
                raise ValueError(f"{source}: {family}.per must be one of {_UNITS}, got {entry['per']!r}")
            prices[family] = Price(float(entry["usd_per_hour"]), entry.get("per", "device"))
        return cls(prices, str(raw.get("as_of", "")), source)

    def with_price(self, family: str, usd_per_hour: float, per: str = "device") -> PriceTable:
        """A copy with one family's price set (added or replaced)."""
        return dataclasses.replace(
            self, prices={**self.prices, family: Price(usd_per_hour, per)}, source=f"{self.source} (edited)"
        )

    def price(self, device_kind: str) -> tuple[str, Price]:
        family = device_family(device_kind) or device_kind
        if family not in self.prices:
            raise KeyError(
                f"no price for device kind {device_kind!r} (family {family!r}) in {self.source}; "
                f"priced: {', '.join(sorted(self.prices))}. Add it with with_price() or edit the file."
            )
        return family, self.prices[family]

    def usd_per_hour(self, device_kind: str, n_devices: int = 1, host_cores: int | None = None) -> float:
        """What `n_devices` of this kind cost per hour; CPUs are billed per host core."""
        _, price = self.price(device_kind)
        if price.per == "host-core":
            # All JAX CPU devices of one process share the host's cores: bill the cores.
            return price.usd_per_hour * (host_cores or os.cpu_count() or 1)
        return price.usd_per_hour * n_devices


@dataclasses.dataclass(frozen=True)
class Dollars:
    """Prices of one step's program under one table. `None` where the inputs were not given."""

    usd_per_hour: float
    per_step: float
    per_run: float | None  # `steps` steps
    per_1k_requests: float | None  # `requests_per_step` requests served by each step
    steps: int | None
    requests_per_step: int | None
    table: str  # source and date of the price table

    @classmethod
    def compute(
        cls,
        prices: PriceTable,
        device_kind: str,
        n_devices: int,
        step_time_s: float,
        *,
        steps: int | None = None,
        requests_per_step: int | None = None,
        host_cores: int | None = None,
    ) -> Dollars:
        hourly = prices.usd_per_hour(device_kind, n_devices, host_cores)
        per_step = hourly * step_time_s / 3600.0
        return cls(
            usd_per_hour=hourly,
            per_step=per_step,
            per_run=per_step * steps if steps is not None else None,
            per_1k_requests=per_step * 1000.0 / requests_per_step if requests_per_step else None,
            steps=steps,
            requests_per_step=requests_per_step,
            table=f"{prices.source}, prices as of {prices.as_of or 'unknown'}",
        )


def dollars_per_run(
    step_time_s: float,
    steps: int,
    device_kind: str,
    n_devices: int = 1,
    prices: PriceTable | None = None,
    *,
    host_cores: int | None = None,
) -> float:
    """USD for a training run.

    Args:
      step_time_s: seconds per step.
      steps: steps in the run.
      device_kind: `jax.Device.device_kind`.
      n_devices: devices the step runs on.
      prices: the price table; default the shipped one.
      host_cores: for CPUs (billed per core): the cores used; default all of the host's.

    Returns:
      USD.
    """
    prices = prices or PriceTable.load()
    return prices.usd_per_hour(device_kind, n_devices, host_cores) * step_time_s * steps / 3600.0


def dollars_per_1k_requests(
    step_time_s: float,
    requests_per_step: int,
    device_kind: str,
    n_devices: int = 1,
    prices: PriceTable | None = None,
    *,
    host_cores: int | None = None,
) -> float:
    """USD per 1000 requests when one step of `step_time_s` serves `requests_per_step` of them.

    For a latency-bound server pass the batch it actually runs (1 for one request at a time); the
    throughput is then `requests_per_step / step_time_s` requests per second.

    Args:
      step_time_s: seconds per serving step.
      requests_per_step: requests one step answers.
      device_kind: `jax.Device.device_kind`.
      n_devices: devices the step runs on.
      prices: the price table; default the shipped one.
      host_cores: for CPUs (billed per core): the cores used; default all of the host's.

    Returns:
      USD per 1000 requests.
    """
    if requests_per_step < 1:
        raise ValueError(f"requests_per_step must be >= 1, got {requests_per_step}")
    run = dollars_per_run(step_time_s, 1, device_kind, n_devices, prices, host_cores=host_cores)
    return run * 1000.0 / requests_per_step

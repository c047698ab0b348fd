"""The device side of an audit: what a chip can do, and how long a step takes on it.

Owns the table of published dense peaks, the matmul micro-benchmark that measures the peak in the
same run, and MFU/HFU (step timing lives in `leanjax.audit.timing`). A device kind without a published
peak is refused rather than guessed: pass a measured peak for it (CPUs always need one).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from leanjax.audit.timing import time_step

# Families, matched in order against `jax.Device.device_kind` (lower-cased). The kinds are what
# JAX reports, e.g. "TPU v5 lite", "TPU v6 lite", "NVIDIA H100 80GB HBM3", "NVIDIA H200", "cpu".
_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"tpu v4 lite|tpu v4i", "tpu-v4i"),
    (r"tpu v4", "tpu-v4"),
    (r"tpu v5 ?lite|tpu v5e", "tpu-v5e"),
    (r"tpu v5p|tpu v5$", "tpu-v5p"),
    (r"tpu v6 ?lite|tpu v6e|trillium", "tpu-v6e"),
    (r"h100.*pcie", "h100-pcie"),
    (r"h100.*nvl", "h100-nvl"),
    (r"h100", "h100-sxm"),
    (r"h200.*nvl", "h200-nvl"),
    (r"h200", "h200-sxm"),
    (r"a100", "a100"),
    (r"^cpu$", "cpu"),
)

# Published dense peaks per chip, FLOP/s (int8: OP/s), without structured sparsity.
# TPU: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (system architecture pages).
# NVIDIA: the A100 datasheet (nvidia.com/a100), H100 datasheet (nvidia.com/h100: SXM, PCIe, NVL
# columns; the sheet's headline figures assume 2:4 sparsity, halved here), H200 datasheet
# (nvidia.com/h200: same tensor cores as H100 SXM).
PEAKS: dict[str, dict[str, float]] = {
    "tpu-v4": {"bfloat16": 275e12},
    "tpu-v5e": {"bfloat16": 197e12, "int8": 394e12},
    "tpu-v5p": {"bfloat16": 459e12, "int8": 918e12},
    "tpu-v6e": {"bfloat16": 918e12, "int8": 1836e12},
    "a100": {"bfloat16": 312e12, "int8": 624e12},
    "h100-sxm": {"bfloat16": 989.4e12, "int8": 1978.9e12},
    "h100-pcie": {"bfloat16": 756.5e12, "int8": 1513e12},
    "h100-nvl": {"bfloat16": 835.5e12, "int8": 1671e12},
    "h200-sxm": {"bfloat16": 989.4e12, "int8": 1978.9e12},
    "h200-nvl": {"bfloat16": 835.5e12, "int8": 1671e12},
}


def device_family(device_kind: str) -> str | None:
    """The family key ("tpu-v5e", "h100-sxm", "cpu", ...) of a device kind, or None if unknown."""
    kind = device_kind.strip().lower()
    return next((family for pattern, family in _FAMILIES if re.search(pattern, kind)), None)


class UnknownDevice(ValueError):
    """No published peak for this device kind and dtype, and no measured one was given."""


@dataclasses.dataclass(frozen=True)
class Peak:
    """A peak rate in FLOP/s per device, and where it comes from."""

    flops_per_s: float
    source: str


def published_peak(device_kind: str, dtype: str = "bfloat16") -> Peak:
    """The published dense peak of one chip. Raises `UnknownDevice` rather than guessing."""
    family = device_family(device_kind)
    dtype = jnp.dtype(dtype).name
    table = PEAKS.get(family or "", {})
    if dtype not in table:
        known = ", ".join(sorted(PEAKS))
        raise UnknownDevice(
            f"no published {dtype} peak for device kind {device_kind!r} (family {family}); known "
            f"families: {known}. Measure it in this run with measure_peak_flops() and pass it."
        )
    return Peak(table[dtype], f"published {dtype} peak of {family}")


def peak_flops(device_kind: str, dtype: str = "bfloat16", *, measured: Peak | float | None = None) -> Peak:
    """The peak to divide by: `measured` when given, else the published one (or `UnknownDevice`)."""
    if measured is not None:
        return measured if isinstance(measured, Peak) else Peak(float(measured), "given")
    return published_peak(device_kind, dtype)


def _default_sizes(platform: str) -> tuple[int, ...]:
    # Big enough to saturate the chip's matrix units, small enough to finish in about a second.
    return (256, 512, 1024) if platform == "cpu" else (2048, 4096, 8192)


def measure_peak_flops(
    dtype="bfloat16",
    *,
    sizes: Sequence[int] | None = None,
    chain: int = 4,
    iters: int = 5,
    device: jax.Device | None = None,
) -> Peak:
    """Measures one device's matmul throughput: the best over `sizes` of square `n x n` products.

    Each timed call runs `chain` dependent products in one program, so the launch and the wait for
    the result are spread over several products. This is the denominator MFU uses: the same device,
    dtype, process and XLA build as the step it is compared with.
    """
    device = device or jax.devices()[0]
    sizes = tuple(sizes or _default_sizes(device.platform))
    dtype = jnp.dtype(dtype)
    # Integer products accumulate in int32, as the int8 serving paths do.
    acc = jnp.int32 if jnp.issubdtype(dtype, jnp.integer) else None

    @jax.jit
    def products(a, b):
        for _ in range(chain):  # each product depends on the last: none can be skipped or hoisted
            a = jnp.matmul(a, b, preferred_element_type=acc).astype(dtype)
        return a

    rng = np.random.default_rng(0)
    best, best_n = 0.0, 0
    for n in sizes:
        # Random data (products of zeros run faster on some chips), scaled to stay finite.
        a = rng.standard_normal((n, n))
        b = rng.standard_normal((n, n)) / (1.0 if acc else np.sqrt(n))
        a, b = (jax.device_put(x.astype(dtype), device) for x in (a, b))
        rate = chain * 2.0 * n**3 / time_step(products, a, b, warmup=2, iters=iters).min_s
        if rate > best:
            best, best_n = rate, n
    return Peak(best, f"measured: {dtype.name} matmul {best_n}^3 on {device.device_kind}")


def utilization(flops_per_step: float, step_time_s: float, peak: Peak) -> float:
    """Fraction of `peak` achieved by `flops_per_step` (per device) done in `step_time_s`."""
    return flops_per_step / step_time_s / peak.flops_per_s


def mfu(
    model_flops_per_step: float,
    step_time_s: float,
    device_kind: str,
    *,
    n_devices: int = 1,
    dtype: str = "bfloat16",
    measured: Peak | float | None = None,
) -> float:
    """Model FLOPs utilisation: analytic FLOPs of a whole step over `n_devices`, per device peak.

    Raises `UnknownDevice` for a device kind without a published peak unless `measured` is given.
    """
    peak = peak_flops(device_kind, dtype, measured=measured)
    return utilization(model_flops_per_step / n_devices, step_time_s, peak)

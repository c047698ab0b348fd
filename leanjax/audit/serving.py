"""Served models side by side: accuracy computed by the served program itself, and which devices can hold a
train step. Time per batch comes from `leanjax.audit.timing.time_interleaved` (calls alternating, so load
hits every arm alike).

    fits = devices_that_fit(peak_bytes)          # families of the price table whose memory holds it

DAWNBench (Coleman et al. 2017, https://dawn.cs.stanford.edu/benchmark/) judges inference by latency
and $ per 1k requests of the deployed model at a fixed accuracy; this module measures those inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Memory per device (GiB, published specs; CPUs: the price table's 4 GB per vCPU times `host_cores`).
DEVICE_MEMORY_GIB = {"tpu-v5e": 16, "tpu-v4": 32, "tpu-v6e": 32, "a100": 40, "h100-sxm": 80,
                     "tpu-v5p": 95, "h200-sxm": 141}
CPU_GIB_PER_CORE = 4


def served_accuracy(program: Callable[..., Any], batches: Iterable[Mapping[str, Any]], inputs: Sequence[str]) -> float:
    """Accuracy of the logits `program(*batch[inputs])` over padded evaluation batches (`label`, `mask`).

    Args:
      program: the served program (params bound), returning `[batch, classes]` logits.
      batches: e.g. `leanjax.data.eval_batches(source, batch_size)`; rows with `mask` False are padding.
      inputs: the batch keys passed to `program`, in order.

    Returns:
      The fraction of real rows whose argmax equals `label`.
    """
    correct = total = 0
    for batch in batches:
        logits = np.asarray(program(*(batch[n] for n in inputs)))
        keep = np.asarray(batch["mask"], bool)
        correct += int(((logits.argmax(-1) == np.asarray(batch["label"])) & keep).sum())
        total += int(keep.sum())
    if not total:
        raise ValueError("served_accuracy: the batches hold no real rows")
    return correct / total


def devices_that_fit(peak_bytes: float, *, memory_gib: Mapping[str, float] = DEVICE_MEMORY_GIB,
                     host_cores: int = 2) -> list[str]:
    """The device families whose memory holds `peak_bytes` (e.g. a compiled train step's peak), smallest
    memory first, plus `"cpu-<n>core"` when `host_cores` cores' share of host memory holds it.

    Args:
      peak_bytes: the bytes one device must hold.
      memory_gib: family -> memory per device in GiB.
      host_cores: CPU cores priced (4 GB each, as the price table's CPU entry assumes).

    Returns:
      Family names, smallest memory first.
    """
    fits = sorted((gib, name) for name, gib in memory_gib.items() if peak_bytes <= gib * 2**30)
    out = [name for _, name in fits]
    if peak_bytes <= host_cores * CPU_GIB_PER_CORE * 1e9:
        out.insert(0, f"cpu-{host_cores}core")
    return out

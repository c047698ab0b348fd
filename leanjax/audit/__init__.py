"""Compiled-program audit: FLOPs (loop-corrected), bytes, memory, kernels, collectives, time,
MFU/HFU against a peak measured in the same run, and dollars from an editable price table.

    audit = audit_compiled(step, state, batch, model_flops=transformer_flops(...))
    print(audit.priced(steps=10_000).table())

`python -m leanjax.experiments.audit --config configs/<exp>/default.py` prints what-if rows for the interventions
an experiment's step supports.
"""

from leanjax.audit.compiled import Audit, Memory, audit_compiled
from leanjax.audit.flops import conv2d_flops, dense_flops, jaxpr_flops, mlp_flops, transformer_flops
from leanjax.audit.hardware import (
    PEAKS,
    Peak,
    UnknownDevice,
    device_family,
    measure_peak_flops,
    mfu,
    peak_flops,
    published_peak,
    utilization,
)
from leanjax.audit.hlo import HloAnalysis, Loop, analyze
from leanjax.audit.prices import Dollars, Price, PriceTable, dollars_per_1k_requests, dollars_per_run
from leanjax.audit.remat_auto import BatchFit, Candidate, Choice, NoPolicyFits, choose_remat, max_batch
from leanjax.audit.timing import Timing, time_interleaved, time_step
from leanjax.audit.whatif import Unavailable, WhatIf, what_if, what_if_table

__all__ = [
    "Audit", "Memory", "audit_compiled",
    "conv2d_flops", "dense_flops", "jaxpr_flops", "mlp_flops", "transformer_flops",
    "PEAKS", "Peak", "UnknownDevice", "device_family", "measure_peak_flops", "mfu",
    "peak_flops", "published_peak", "utilization",
    "Timing", "time_interleaved", "time_step",
    "HloAnalysis", "Loop", "analyze",
    "Dollars", "Price", "PriceTable", "dollars_per_1k_requests", "dollars_per_run",
    "Unavailable", "WhatIf", "what_if", "what_if_table",
    "BatchFit", "Candidate", "Choice", "NoPolicyFits", "choose_remat", "max_batch",
]

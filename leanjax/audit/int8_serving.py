"""Where int8 (W8A8) serving pays: its time split on one layer, and its speed-up over a grid of shapes.

`w8a8_split` times the pieces of one W8A8 matmul (`leanjax.transforms.W8A8`) beside the f32 matmul it
replaces: quantizing the activations (absmax per row, divide, round), the int8 x int8 -> int32 dot alone,
and the whole W8A8 layer (quantize, dot, rescale). `shape_sweep` times whole serving functions over
`(batch, seq)` shapes, so a README can say at which sizes int8 wins (the kernels' share of the step grows
with batch x seq, the f32 attention's with seq^2). All times alternate the arms in one process
(ratios, not absolute times, are what a loaded machine can report).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from leanjax.audit.hardware import time_step
from leanjax.transforms.typed import apply
from leanjax.transforms.w8a8 import _quantize_rows, serve_int8


def _alternate(fns: dict[str, tuple[Callable, tuple]], rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each `name: (jitted fn, args)`, timed alternately in `rounds` rounds."""
    times = {n: [] for n in fns}
    for fn, args in fns.values():  # compile outside the timed rounds
        jax.block_until_ready(fn(*args))
    for _ in range(rounds):
        for n, (fn, args) in fns.items():
            times[n].append(time_step(fn, *args, warmup=1, iters=iters).median_s)
    return {n: statistics.median(t) for n, t in times.items()}


def w8a8_split(x: jax.Array, kernel: jax.Array, *, rounds: int = 3, iters: int = 5) -> dict[str, float]:
    """Seconds per call of the pieces of one W8A8 layer `x @ kernel`, beside its f32 matmul.

    Args:
      x: float activations `[rows, K]`.
      kernel: float kernel `[K, N]` (quantized per output channel here, as `serve_int8` does).
      rounds: alternating timing rounds.
      iters: calls per arm per round.

    Returns:
      `{"f32_dot", "quantize_activations", "int8_dot", "w8a8_layer"}` in seconds (medians);
      `"rescale_outputs"`, what the layer costs beyond its two pieces (the int32 -> f32 conversion and
      the row/channel rescaling of the output, which XLA:CPU does not fuse into the dot); and
      `"int8_dot_speedup"` (f32_dot / int8_dot) and `"layer_speedup"` (f32_dot / w8a8_layer).
    """
    if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
        raise ValueError(f"w8a8_split needs x [rows, K] and kernel [K, N], got {x.shape} and {kernel.shape}")
    w = serve_int8({"kernel": kernel}, "kernel")["kernel"]
    xq, _ = _quantize_rows(x, 1)
    codes = w.weight.data
    dims = (((1,), (0,)), ((), ()))
    fns = {
        "f32_dot": (jax.jit(lambda a, b: a @ b), (x, kernel)),
        "quantize_activations": (jax.jit(lambda a: _quantize_rows(a, 1)), (x,)),
        "int8_dot": (jax.jit(lambda a, b: lax.dot_general(a, b, dims, preferred_element_type=jnp.int32)),
                     (xq, codes)),
        "w8a8_layer": (jax.jit(apply(lambda a, b: a @ b)), (x, w)),
    }
    t = _alternate(fns, rounds, iters)
    rest = max(t["w8a8_layer"] - t["quantize_activations"] - t["int8_dot"], 0.0)
    return {**t, "rescale_outputs": rest, "int8_dot_speedup": t["f32_dot"] / t["int8_dot"],
            "layer_speedup": t["f32_dot"] / t["w8a8_layer"]}


def shape_sweep(arms: dict[str, tuple[Callable, object]], make_inputs: Callable[[int, int], tuple],
                shapes: Sequence[tuple[int, int]], *, rounds: int = 3, iters: int = 3) -> dict[str, dict[str, float]]:
    """Throughput of each `(fn, params)` arm relative to the first, at each `(batch, seq)` shape.

    Args:
      arms: `name: (fn, params)`, `fn(params, *inputs)`; the first arm is the reference.
      make_inputs: `(batch, seq) -> inputs tuple`.
      shapes: `(batch, seq)` pairs.
      rounds: alternating timing rounds per shape.
      iters: calls per arm per round.

    Returns:
      `{"<batch>x<seq>": {arm: examples/s relative to the first arm}}`.
    """
    if not arms:
        raise ValueError("shape_sweep needs at least one arm")
    out = {}
    for batch, seq in shapes:
        if batch < 1 or seq < 1:
            raise ValueError(f"shape_sweep: shape ({batch}, {seq}) must be positive")
        inputs = make_inputs(batch, seq)
        t = _alternate({n: (jax.jit(fn), (p, *inputs)) for n, (fn, p) in arms.items()}, rounds, iters)
        base = t[next(iter(arms))]
        out[f"{batch}x{seq}"] = {n: base / s for n, s in t.items()}
    return out

"""Checks the audit against this backend's XLA on a small Transformer train step.

    python -m leanjax.audit.selfcheck [--layers 8 --width 1024 --seq 512 --batch 8 --dtype bfloat16]

Prints, for a scanned and an unrolled build of the same step: XLA's FLOP count and the HLO
counter's once-through count (equal, library calls aside, when the counter follows XLA's rules on
this backend), the counter's per-step count (scanned should equal unrolled, and both the analytic
count), and the timed audit of the scanned step (MFU against the peak measured here and against
the published one). `--dump DIR` writes the optimized HLO (gzipped), XLA's cost analysis and this
report: tests/fixtures/audit/h200 was written so, and tests/test_audit.py reads it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp

from leanjax.audit.compiled import audit_compiled
from leanjax.audit.flops import transformer_flops
from leanjax.audit.hlo import analyze


def _block(h, w):
    d = h.shape[-1]
    q, k, v = h @ w["q"], h @ w["k"], h @ w["v"]
    scores = (q @ k.swapaxes(-1, -2)).astype(jnp.float32) / math.sqrt(d)
    a = jax.nn.softmax(scores, axis=-1).astype(h.dtype) @ v
    h = h + a @ w["o"]
    return h + jax.nn.gelu(h @ w["up"]) @ w["down"]


def _loss(params, x):
    """`params` stacked along a leading layer axis (scanned), or a list of per-layer dicts."""
    if isinstance(params, dict):
        h = jax.lax.scan(lambda h, w: (_block(h, w), None), x, params)[0]
    else:
        h = x
        for w in params:
            h = _block(h, w)
    return jnp.mean(jnp.square(h.astype(jnp.float32)))


def _sgd(params, x):
    # The input is trained too, so both builds compute the same gradients (the scanned body
    # computes the input gradient on every iteration whether it is used or not).
    grads = jax.grad(_loss, argnums=(0, 1))(params, x)
    return jax.tree.map(lambda p, g: p - 1e-3 * g, (params, x), grads)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--dump", type=Path, default=None)
    args = p.parse_args(argv)

    L, d, dtype = args.layers, args.width, jnp.dtype(args.dtype)
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "up": (d, 4 * d), "down": (4 * d, d)}
    keys = jax.random.split(jax.random.key(0), len(shapes))
    params = {n: (jax.random.normal(k, (L, *s)) / math.sqrt(s[0])).astype(dtype)
              for k, (n, s) in zip(keys, shapes.items())}
    x = jax.random.normal(jax.random.key(1), (args.batch, args.seq, d)).astype(dtype)
    n_params = L * sum(a * b for a, b in shapes.values())
    model = transformer_flops(n_params, n_layers=L, d_model=d, seq_len=args.seq, tokens=args.batch * args.seq)

    # The dump path is left out: it names a directory of the machine that ran this.
    report: dict = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "args": vars(args) | {"dump": None},
                    "model_flops": model}
    layers = [jax.tree.map(lambda p: p[k], params) for k in range(L)]
    for label, weights in (("scanned", params), ("unrolled", layers)):
        compiled = jax.jit(_sgd).lower(weights, x).compile()
        cost = compiled.cost_analysis()
        text = compiled.as_text()
        hlo = analyze(text)
        report[label] = {
            "xla_flops": cost["flops"],
            "counter_once": hlo.flops_once,
            "counter_once_library": hlo.library_flops_once,
            # 1.0 when the counter follows XLA's rules on this backend (library calls aside).
            "counter_vs_xla": (hlo.flops_once - hlo.library_flops_once) / cost["flops"],
            "counter_per_step": hlo.flops,
            "xla_bytes": cost["bytes accessed"],
            "counter_bytes_once": hlo.bytes_once,
            "loops": [loop.trip_count for loop in hlo.loops],
            "custom_calls": hlo.custom_calls,
            "fusions": hlo.fusions,
        }
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            with gzip.open(args.dump / f"selfcheck_{label}.hlo.txt.gz", "wt") as f:
                f.write(text)
            (args.dump / f"selfcheck_{label}.cost.json").write_text(json.dumps(cost, indent=1))
    report["scanned_over_unrolled"] = report["scanned"]["counter_per_step"] / report["unrolled"]["counter_per_step"]
    report["unrolled_over_model"] = report["unrolled"]["counter_per_step"] / model

    audit = audit_compiled(_sgd, params, x, name="selfcheck step", donate_argnums=0,
                           model_flops=model, iters=args.iters)
    summary = audit.to_dict()
    report["audit"] = {k: summary[k] for k in ("timing", "peak", "published_peak", "mfu", "mfu_published", "hfu",
                                               "model_to_hardware")}
    if args.dump:
        (args.dump / "selfcheck_report.json").write_text(json.dumps(report, indent=1))
    print(audit.table())
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

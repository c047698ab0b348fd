"""`--audit` for any experiment that exposes `build(config)`: compile its train and serving steps and report.

`subject(config, build)` turns an experiment's config into the audit library's `Subject` (the train and
serving steps, rebuildable with other model options); it is shared with `python -m leanjax.audit`, which
adds the what-if rows. Like every module under `leanjax/experiments`, this one reads configs.
"""

from __future__ import annotations

import copy

import ml_collections

from leanjax import data
from leanjax.audit import interventions
from leanjax.audit.hardware import measure_peak_flops
from leanjax.audit.prices import PriceTable
from leanjax.audit.whatif import Unavailable
from leanjax.experiments._launch import apply_override
from leanjax.optim import make_optimizer


def _keys_named(config: ml_collections.ConfigDict, name: str, prefix: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            found += _keys_named(value, name, f"{prefix}{key}.")
        elif key == name:
            found.append(prefix + key)
    return found


def subject(config: ml_collections.ConfigDict, build) -> interventions.Subject:
    """The experiment's train and serving steps, rebuildable with other model options."""
    parts = build(config)
    tx = make_optimizer(config.optimizer, learning_rate=config.learning_rate, total_steps=config.num_steps,
                        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay)

    def rebuild(**options) -> interventions.Subject:
        changed = copy.deepcopy(config)
        for option, value in options.items():
            keys = _keys_named(changed, option)
            if not keys:
                raise Unavailable(f"the config has no {option!r} key")
            for key in keys:
                apply_override(changed, key, str(value))
        return subject(changed, build)

    return interventions.Subject(
        params=parts["params"],
        loss=parts["loss"],
        serve=parts["metrics"],
        tx=tx,
        train_batch=next(iter(data.batches(parts["train"], batch_size=config.batch_size, seed=config.seed))),
        serve_batch=next(iter(data.eval_batches(parts["eval"], config.eval_batch_size))),
        rebuild=rebuild,
        seed=config.seed,
    )


def audit_experiment(build, config: ml_collections.ConfigDict, workdir: str, iters: int = 5):
    """Audit the experiment's train and serving steps (nothing is trained): `(metrics, headline)`."""
    base = subject(config, build)
    prices = PriceTable.load()
    kw = dict(iters=iters, peak=measure_peak_flops("float32"))
    train = interventions.audit_train(base, "train step", **kw).priced(prices, steps=config.num_steps)
    serve = interventions.audit_serve(base, "serving step", **kw).priced(
        prices, requests_per_step=interventions.requests_per_step(base))
    print(train.table())
    print(serve.table())
    headline = {
        "audit.train.flops": train.flops, "audit.train.peak_bytes": train.memory.peak,
        "audit.train.step_time_s": train.timing.median_s, "audit.train.usd_per_run": train.dollars.per_run,
        "audit.serve.flops": serve.flops, "audit.serve.peak_bytes": serve.memory.peak,
        "audit.serve.usd_per_1k_requests": serve.dollars.per_1k_requests,
    }
    return {"audit": {"train": train.to_dict(), "serve": serve.to_dict()}}, headline

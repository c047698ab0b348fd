"""`--audit` for any experiment that exposes `build(config)`: compile its train and serving steps and report.

`build(config)` returns a `leanjax.experiments._build.Build`: the params, loss, optimizer, seed, batch size,
run length and data, and optionally the serving step and params, fixed batches, a trainable mask and more
served arms (`serve_arms`: headline `audit.serve.<name>.*`). Nothing here reads those from the config.

`subject(config, build)` turns this into the audit library's `Subject` (rebuildable with other model
options); it is shared with `python -m leanjax.experiments.audit`, which adds the what-if rows. Like every module
under `leanjax/experiments`, this one reads configs.
"""

from __future__ import annotations

import copy

import jax
import ml_collections

from leanjax import data, transforms
from leanjax.audit import audit_compiled, interventions
from leanjax.audit.hardware import measure_peak_flops
from leanjax.audit.prices import PriceTable
from leanjax.audit.whatif import Unavailable, what_if_table, what_ifs_to_dict
from leanjax.experiments._build import Build
from leanjax.experiments._launch import apply_override
from leanjax.state import TrainState
from leanjax.step import make_train_step


def _keys_named(config: ml_collections.ConfigDict, name: str, prefix: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            found += _keys_named(value, name, f"{prefix}{key}.")
        elif key == name:
            found.append(prefix + key)
    return found


def _deterministic(loss):
    return lambda params, batch: loss(params, batch, None)[0]


def _subject(config: ml_collections.ConfigDict, build) -> tuple[interventions.Subject, Build]:
    parts = build(config)
    if not isinstance(parts, Build):
        raise TypeError(f"build(config) must return a leanjax.experiments._build.Build, got {type(parts).__name__}")
    train_batch = parts.train_batch
    if train_batch is None:
        train_batch = next(iter(data.batches(parts.train, batch_size=parts.batch_size, seed=parts.seed)))
    serve_batch = parts.serve_batch
    if serve_batch is None:
        serve_batch = train_batch if parts.eval is None else next(iter(data.eval_batches(
            parts.eval, parts.eval_batch_size or parts.batch_size)))

    def rebuild(**options) -> interventions.Subject:
        changed = copy.deepcopy(config)
        for option, value in options.items():
            keys = _keys_named(changed, option)
            if not keys:
                raise Unavailable(f"the config has no {option!r} key")
            for key in keys:
                apply_override(changed, key, str(value))
        return subject(changed, build)

    base = interventions.Subject(
        params=parts.params, loss=parts.loss, serve=parts.metrics or _deterministic(parts.loss), tx=parts.tx,
        train_batch=train_batch, serve_batch=serve_batch, rebuild=rebuild, seed=parts.seed,
        serve_params=parts.serve_params)
    return base, parts


def subject(config: ml_collections.ConfigDict, build) -> interventions.Subject:
    """The experiment's train and serving steps, rebuildable with other model options."""
    return _subject(config, build)[0]


def _audit_train(base: interventions.Subject, trainable, **audit_kw):
    """The train step; with `trainable`, only those leaves train (and have optimizer state)."""
    if trainable is None:
        return interventions.audit_train(base, "train step", **audit_kw)
    state = TrainState.create(base.params, base.tx, jax.random.key(base.seed), trainable=trainable)
    step = make_train_step(transforms.apply(base.loss), base.tx, trainable=trainable)
    return audit_compiled(step, state, base.train_batch, name="train step", **audit_kw)


def audit_experiment(build, config: ml_collections.ConfigDict, workdir: str, iters: int = 5):
    """Audit the experiment's train and serving steps (nothing is trained): `(metrics, headline)`."""
    base, parts = _subject(config, build)
    prices = PriceTable.load()
    kw = dict(iters=iters, peak=measure_peak_flops("float32"))
    per_request = dict(requests_per_step=interventions.requests_per_step(base))
    train = _audit_train(base, parts.trainable, **kw).priced(prices, steps=parts.num_steps)
    serve = interventions.audit_serve(base, "serving step", parts.serve_params, **kw).priced(
        prices, **per_request)
    audits = {"train": train, "serve": serve}
    for arm, (metrics_fn, params) in parts.serve_arms.items():
        audits[f"serve.{arm}"] = interventions.audit_serve(
            interventions.Subject(params, base.loss, metrics_fn, base.tx, base.train_batch, base.serve_batch),
            f"serving step: {arm}", **kw).priced(prices, **per_request)
    for audit in audits.values():
        print(audit.table())
    # What each intervention would do to this experiment's steps (rows built from its model and params).
    train_rows = [r.priced(prices, steps=parts.num_steps)
                  for r in [*interventions.train_what_ifs(base, train, **kw), *interventions.data_rows(train)]]
    serve_rows = [r.priced(prices, **per_request) for r in interventions.serve_what_ifs(base, **kw)]
    print(what_if_table(train, train_rows, prices))
    print(what_if_table(serve, serve_rows, prices))
    whatif = {"train": what_ifs_to_dict(train, train_rows, prices),
              "serve": what_ifs_to_dict(serve, serve_rows, prices)}
    headline = {"audit.train.flops": train.flops, "audit.train.peak_bytes": train.memory.peak,
                "audit.train.step_time_s": train.timing.median_s, "audit.train.usd_per_run": train.dollars.per_run}
    for name, audit in audits.items():
        if name != "train":
            headline.update({f"audit.{name}.flops": audit.flops, f"audit.{name}.peak_bytes": audit.memory.peak,
                             f"audit.{name}.usd_per_1k_requests": audit.dollars.per_1k_requests})
    rows = whatif["train"][1:] + whatif["serve"][1:]
    headline["audit.whatif.rows"] = len(rows)
    headline["audit.whatif.available"] = sum(r["audit"] is not None for r in rows)
    return {"audit": {name: audit.to_dict() for name, audit in audits.items()}, "whatif": whatif}, headline

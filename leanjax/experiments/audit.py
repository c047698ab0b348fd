"""What-if rows for an experiment: what each intervention would do to its memory, FLOPs, time and $.

    python -m leanjax.experiments.audit --config configs/baseline/default.py[:ARG] [--config.KEY=VALUE ...]
        [--iters 5] [--prices my_prices.json] [--json audit.json]

Each row compiles the transformed train or serving step of the experiment and audits it (nothing is
trained): LoRA, QLoRA, remat policies, bf16 compute, pruning, a half-depth student and gradient
accumulation for training, plus the data-side rows (a kept fraction of the data, a Hyperband study) as run
multipliers; int8/int4, 2:4-sparse and 50%-compacted weights for serving. A row that cannot apply to this
model, or that leaves its compiled step unchanged, says why. Dollars: the training run's `config.num_steps`
steps, and 1000 requests served one eval batch per step, under the price table (`--prices`, default the
shipped one).

The experiment `leanjax.experiments.<name>` (the config's directory name) provides
`build(config) -> Build` (`leanjax.experiments._build`: params, loss, optimizer, seed, batch size, steps and
data), as every experiment does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from leanjax.audit import interventions
from leanjax.audit.hardware import measure_peak_flops
from leanjax.audit.prices import PriceTable
from leanjax.audit.whatif import WhatIf, what_if_table
from leanjax.experiments._audit import subject
from leanjax.experiments._launch import ConfigError, apply_override, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leanjax.experiments.audit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/<experiment>/default.py[:ARG]")
    parser.add_argument("--iters", type=int, default=5, help="timed calls per step (median)")
    parser.add_argument("--prices", default=None, help="a price table JSON (default: the shipped one)")
    parser.add_argument("--json", default=None, help="also write every audit to this JSON file")
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config)
        for item in rest:
            key, eq, value = item.removeprefix("--config.").partition("=")
            if not item.startswith("--config.") or not eq:
                raise ConfigError(f"unrecognised argument {item!r}; overrides look like --config.key=value")
            apply_override(config, key, value)
        experiment = Path(args.config.partition(":")[0]).parent.name
        module = importlib.import_module(f"leanjax.experiments.{experiment}")
        if not hasattr(module, "build"):
            raise ConfigError(f"leanjax.experiments.{experiment} has no build(config) to audit")
        base = subject(config, module.build)
    except (ConfigError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    prices = PriceTable.load(args.prices)
    kw = dict(iters=args.iters, peak=measure_peak_flops("float32"))  # one denominator for every row
    per_run = dict(steps=config.num_steps)
    per_request = dict(requests_per_step=interventions.requests_per_step(base))
    train = interventions.audit_train(base, "baseline", **kw).priced(prices, **per_run)
    serve = interventions.audit_serve(base, "baseline serving", **kw).priced(prices, **per_request)
    train_rows = [r.priced(prices, **per_run)
                  for r in [*interventions.train_what_ifs(base, train, **kw), *interventions.data_rows(train)]]
    serve_rows = [r.priced(prices, **per_request) for r in interventions.serve_what_ifs(base, **kw)]

    print(train.table())
    print(f"\ntraining: {config.num_steps} steps of batch {config.batch_size}")
    print(what_if_table(train, train_rows, prices))
    print(f"\nserving: batches of {per_request['requests_per_step']} requests")
    print(what_if_table(serve, serve_rows, prices))
    if args.json:
        rows = {"train": [WhatIf("baseline", train), *train_rows], "serve": [WhatIf("baseline", serve), *serve_rows]}
        Path(args.json).write_text(json.dumps({k: [r.to_dict() for r in v] for k, v in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

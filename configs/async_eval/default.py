"""Async evaluation: the training-speed cost of evaluating, synchronous vs asynchronous.

    python -m leanjax.experiments.async_eval                                        # 3,600 steps: see README
    python -m leanjax.experiments.async_eval --config configs/async_eval/default.py:tiny   # 93 s, load ~12
    python -m leanjax.experiments.async_eval --mode=eval_sidecar --workdir W        # follow the run in W

Default: the MNIST-5k CNN, 600 steps x3 variants x2 repeats, evaluation on all 1,000 test digits every
100 steps on a simulated device of its own (8 simulated CPU devices; they share the host's cores).
`:tiny`: 30 steps, eval every 10 on 2 test batches, one repeat; the three variants share one compiled step.
Expected: async_overhead well below sync_overhead. The <= 0.05 goal assumes evaluation has hardware of
its own; here both share 2 cores, so async_overhead measures the contention (reported as measured).
"""

import ml_collections

from configs import common
from leanjax.experiments._launch import load_config

CHOICES = {"task": ("cnn", "lm")}  # the baseline's


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_config("configs/baseline/default.py" + (":tiny" if arg == "tiny" else ""))
    c.num_steps = 600
    c.eval_every = 100
    c.log_every = 50
    c.progress = False
    c.repeats = 2
    c.max_pending = 1          # eval points beyond one pending snapshot are skipped, not queued
    c.sidecar = ml_collections.ConfigDict(dict(poll_s=1.0, idle_timeout_s=600.0, stop_at_accuracy=0.0))
    if arg == "tiny":
        c.num_steps = 30
        c.eval_every = 10
        c.log_every = 5
        c.repeats = 1
        c.eval_max_batches = 2
        c.sidecar.idle_timeout_s = 60.0
    else:
        common.check_variant(arg, "tiny")
    return c

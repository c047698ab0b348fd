"""Parallel: the auto mesh planner against an exhaustive measurement of every mesh.

    python -m leanjax.experiments.parallel                                      # 10 meshes: see README
    python -m leanjax.experiments.parallel --config configs/parallel/default.py:tiny   # 88 s, load ~11

The module asks for 8 simulated CPU devices itself (XLA_FLAGS, before jax is imported).
Default: 10 meshes over 8 devices x (data, fsdp, tensor), a 2-layer D=64 char LM, batch 32 x 64.
Expected: planner_regret <= 0.10 (the planner times its top 3 by estimate; on `:tiny` the estimate
ranks pure data parallelism first, since it moves the fewest collective bytes in the fewest ops).
`:tiny`: 2 devices x (data, tensor) (2 meshes), a 1-layer D=32 LM; every headline key, regret not meaningful.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.devices = 0                     # 0: all devices
    c.axes = ("data", "fsdp", "tensor")
    c.batch_size = 32
    c.learning_rate = 1e-3
    c.vocab_parallel_loss = True      # the shard_map loss (no all-gather of the logits)
    c.train_steps = 30                # on the chosen mesh, after the sweep
    c.lm = ml_collections.ConfigDict(dict(seq_len=64, hidden_size=64, num_layers=2, num_heads=4,
                                          intermediate_size=256, scan_layers=False))
    c.planner = ml_collections.ConfigDict(dict(measure_top=3, steps=5, rounds=3))
    c.exhaustive = ml_collections.ConfigDict(dict(steps=5, rounds=3))
    if arg == "tiny":
        c.devices = 2
        c.axes = ("data", "tensor")
        c.batch_size = 8
        c.train_steps = 3
        c.lm.update(dict(seq_len=16, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
        c.planner.update(dict(measure_top=2, steps=2, rounds=1))
        c.exhaustive.update(dict(steps=2, rounds=1))
    else:
        common.check_variant(arg, "tiny")
    return c

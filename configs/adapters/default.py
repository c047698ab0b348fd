"""Adapters: many LoRA adapters over one frozen (NF4) base in one compiled program, and DoRA's step cost.

    python -m leanjax.experiments.adapters                                          # ~10 min, 2 loaded cores
    python -m leanjax.experiments.adapters --config configs/adapters/default.py:tiny  # ~1 min

A MiniLM-size encoder (6 scanned layers, D=384, random weights: only shapes matter here) with an NF4 base
and rank-8 LoRA on every kernel serves a batch of requests, each with its own adapter (N = 1, 4, 16), and
trains LoRA vs DoRA side by side. Goals (issue 17): `multi_adapter.memory_overhead_16` <= 1.05,
`multi_adapter.throughput_ratio_16` >= 0.8, `dora.step_time_ratio` <= 1.10. Measured figures:
experiments/adapters/README.md. Tiny: every headline key, timing ratios not meaningful (-O0 compiles)."""

import ml_collections

from configs import common

CHOICES = {"base": ("nf4", "float")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=8192, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536))
    c.base = "nf4"              # 'nf4' (QLoRA base, group_size below) or 'float'
    c.group_size = 64
    c.rank = 8
    c.targets = r"layers/.*kernel"  # every kernel of every (scanned) layer
    c.batch_size = 32           # requests per served batch (one adapter each)
    c.seq_len = 64
    c.num_adapters = (1, 4, 16)  # the first is the reference (a plain single-adapter tree)
    c.rounds = 7                # timed calls per program, alternating between programs (median)
    c.train_batch_size = 16     # DoRA vs LoRA train step

    if arg == "tiny":
        c.model = ml_collections.ConfigDict(dict(
            vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
        c.group_size = 16
        c.rank = 2
        c.batch_size = 16
        c.seq_len = 8
        c.rounds = 2
        c.train_batch_size = 4
    else:
        common.check_variant(arg, "tiny")
    return c

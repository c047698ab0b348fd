"""Remat: the Shakespeare char LM (blocks in a `lax.scan`) under each gradient-checkpointing policy.

    python -m leanjax.experiments.remat                                        # ~15 min on 2 loaded cores
    python -m leanjax.experiments.remat --config configs/remat/default.py:tiny  # ~1 min of CPU

Goal (issue 6): `nothing.memory_ratio` <= 0.3 at `nothing.step_time_ratio` <= 1.4. Measured (default, 4
layers, D=256, batch 16, seq 128; experiments/remat/README.md): 0.385 at 0.885 (memory missed; 12 layers
compile to 0.259), `auto.policy` nothing (fastest under half of `none`'s peak), `auto.max_batch_ratio` 3.83.
Tiny: every headline key; `nothing.memory_ratio` ~0.49, `auto.max_batch_ratio` ~2.7."""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16
    c.eval_batch_size = 16
    # The optimizer of the measured train step (nothing is trained; `python -m leanjax.experiments.audit` reads these).
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.num_steps = 1000
    c.warmup_steps = 0
    c.weight_decay = 0.0
    c.model = ml_collections.ConfigDict(dict(
        tokenizer="char", seq_len=128, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
        dropout=0.0, scan_layers=True, remat="none"))
    # The first policy is the reference of every ratio.
    c.policies = ("none", "dots", "nothing", "names:attn_qkv,attn_out", "segment:2")
    c.depth_trend = (8, 12, 16)   # `nothing` vs `none` compiled peaks at these depths (compile only)
    c.rounds = 5                  # timed calls per policy, alternating between policies (median)
    c.budget_fraction = 0.5       # auto's memory budget: this fraction of `none`'s compiled peak
    c.max_batch_limit = 1024      # max-batch search: largest batch tried
    c.whatif = True               # compare with `python -m leanjax.experiments.audit`'s remat rows (compiled memory)

    if arg == "tiny":
        c.batch_size = 8
        c.eval_batch_size = 8
        c.model.seq_len = 32
        c.model.hidden_size = 32
        c.model.num_layers = 2
        c.model.intermediate_size = 64
        c.rounds = 2
        c.max_batch_limit = 16
        c.whatif = False  # four more compiles; the default run reports it
        c.depth_trend = (4,)
    else:
        common.check_variant(arg, "tiny")
    return c

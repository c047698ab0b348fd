"""Curriculum vs random order: MNIST-5k MLP (scored curriculum) and Shakespeare char LM (length warmup,
loss-scored curriculum), 3 seeds each.

    python -m leanjax.experiments.curriculum                                        # ~20-30 min, 2 cores
    python -m leanjax.experiments.curriculum --config configs/curriculum/default.py:tiny   # 3 min 17 s
        # wall (93 s CPU, mostly ~8 compilations: 1 seed instead of 2 saved no CPU) at load ~14

Headline: the `headline` arm (default lm/length_warmup) against random order: steps to the target
(the worst random seed's final eval metric), speedup (mean over seeds) and its worst seed.
Expected (tiny): every headline key present; its numbers mean nothing (a handful of steps).
"""

import ml_collections

from configs import common

CHOICES = {"mnist.arms": ("random", "curriculum", "anti"), "lm.arms": ("random", "length_warmup", "loss_curriculum"),
           "headline": ("mnist/curriculum", "mnist/anti", "lm/length_warmup", "lm/loss_curriculum")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.tasks = ("mnist", "lm")
    c.num_seeds = 3
    c.headline = "lm/length_warmup"   # task/arm reported in the headline; the rest go to metrics

    c.mnist = ml_collections.ConfigDict(dict(
        arms=("random", "curriculum", "anti"), hidden=(256,), dropout=0.0, batch_size=64,
        learning_rate=1e-3, num_steps=600, eval_every=25, pacing="root", c0=0.2, pacing_steps=300,
        score="loss", ref_steps=100, target=0.0))    # target 0: the worst random seed's final accuracy
    c.lm = ml_collections.ConfigDict(dict(
        arms=("random", "length_warmup", "loss_curriculum"), seq_len=128, buckets=(32, 64, 128),
        length_warmup_steps=200, hidden_size=64, num_layers=2, num_heads=4, batch_size=16,
        learning_rate=2e-3, warmup_steps=20, num_steps=500, eval_every=25, eval_batches=8,
        train_windows=8000, pacing="root", c0=0.2, pacing_steps=250, ref_steps=100, target=0.0))

    if arg == "tiny":
        c.num_seeds = 2
        c.mnist.update(dict(arms=("random", "curriculum"), hidden=(32,), num_steps=40, eval_every=10,
                            pacing_steps=20, ref_steps=10))
        c.lm.update(dict(arms=("random", "length_warmup"), seq_len=32, buckets=(8, 16, 32), length_warmup_steps=12,
                         hidden_size=16, num_layers=1, num_heads=2, batch_size=8, num_steps=24, eval_every=8,
                         eval_batches=2, train_windows=256, pacing_steps=12, ref_steps=8, warmup_steps=2))
    else:
        common.check_variant(arg, "tiny")
    return c

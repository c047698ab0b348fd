"""Baseline: the brute-force reference, trained from scratch on embedded data.

    python -m leanjax.experiments.baseline                                  # MNIST-5k CNN, ~2-4 min on 2 cores
    python -m leanjax.experiments.baseline --config configs/baseline/default.py:tiny   # < 1 min
    python -m leanjax.experiments.baseline --config.task=lm                 # Shakespeare char LM

Expected (default): eval_accuracy >= 0.97 on the 1,000 held-out MNIST-5k digits.
"""

import ml_collections

from configs import common

CHOICES = {"task": ("cnn", "lm")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "cnn"            # 'cnn': MNIST-5k digits; 'lm': Shakespeare causal LM
    c.seed = 0
    c.batch_size = 64
    c.num_steps = 1500
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.warmup_steps = 100
    c.weight_decay = 1e-4
    c.grad_accum_steps = 1
    c.log_every = 50
    c.eval_every = 250
    c.eval_batch_size = 250
    c.eval_max_batches = 0    # 0: the whole evaluation split
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.progress = True
    c.data_parallel = False   # True: data-parallel over every device of every process (leanjax.parallel.launch)

    c.cnn = ml_collections.ConfigDict(dict(features=(32, 64), dense=128, dropout=0.3))
    c.lm = ml_collections.ConfigDict(dict(
        tokenizer="char", seq_len=128, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512,
        dropout=0.1, scan_layers=False, remat="none"))

    if arg == "lm":
        c.task = "lm"
        c.batch_size = 32
        c.learning_rate = 1e-3
        c.eval_batch_size = 32
        c.eval_max_batches = 20
    elif arg == "tiny":
        c.batch_size = 32
        c.num_steps = 60
        c.warmup_steps = 10
        c.log_every = 10
        c.eval_every = 30
        c.checkpoint_every = 30
        c.cnn.features = (8, 16)
        c.cnn.dense = 32
        c.lm.seq_len = 32
        c.lm.hidden_size = 32
        c.lm.num_layers = 1
        c.lm.intermediate_size = 64
        c.eval_max_batches = 4
    else:
        common.check_variant(arg, "tiny", "lm")
    return c

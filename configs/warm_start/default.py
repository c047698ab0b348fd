"""warm_start: a word-level tweet-sentiment model with GloVe 6B-50d embeddings vs random ones, 3 seeds.

    python -m leanjax.experiments.warm_start                                    # 9 runs x 600 steps: 29.5 min, load 2-7
    python -m leanjax.experiments.warm_start --config configs/warm_start/default.py:tiny   # 29 s, quiet 2 cores

Model: 10,000-word vocabulary (+[PAD], [UNK]) from the train split, width 50 (GloVe's, so no
projection), one Transformer layer, mean pooling; batch 64 x 48 words, 600 steps (~1.3 epochs) per run,
evaluated on the 3,722 validation tweets every 25 steps (the resolution of steps_to_target).
Goal (default): warm-start speedup >= 2. Measured: missed, GloVe slower than random (0.706 vs 0.755 after
600 steps, 3 seeds); see experiments/warm_start/README.md for why and what to try (`embedding_scale=0.02`).
`:tiny`: 1,000 training tweets, 500-word vocabulary, 20 steps, 1 seed: checks the wiring only.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seeds = (0, 1, 2)
    c.arms = ("random", "warm", "warm_frozen")   # warm_frozen: GloVe rows fixed (train_rows)
    c.vocab_size = 10_000
    c.seq_len = 48
    c.hidden_size = 50        # GloVe 6B-50d's width; other widths are projected
    c.embedding_scale = 0.0   # > 0: rescale the GloVe table to this RMS (the model's init is 0.02); 0: GloVe's own
    c.num_layers = 1
    c.num_heads = 5
    c.intermediate_size = 128
    c.dropout = 0.1
    c.batch_size = 64
    c.num_steps = 600
    c.learning_rate = 1e-3
    c.warmup_steps = 20
    c.weight_decay = 0.01
    c.train_examples = 0      # 0: the whole train split (29,775 tweets)
    c.eval_split = "validation"
    c.eval_examples = 0       # 0: all 3,722; else a fixed random subset
    c.eval_batch_size = 512
    c.eval_every = 25
    c.progress = False
    c.embedding_centre = False  # subtract GloVe's mean row before scaling
    # Regime arm (issue 19): few labels, centred GloVe rows at the model's init RMS; these override the above.
    c.few_labels = ml_collections.ConfigDict(dict(
        enabled=True, train_examples=500, embedding_scale=0.02, embedding_centre=True, num_steps=300,
        warmup_steps=10, eval_every=10, eval_examples=1000, arms=("random", "warm")))

    if arg == "tiny":
        c.seeds = (0,)
        c.vocab_size = 500
        c.seq_len = 16
        c.batch_size = 16
        c.num_steps = 20
        c.warmup_steps = 2
        c.train_examples = 1_000
        c.eval_examples = 128
        c.eval_batch_size = 128
        c.eval_every = 5
        c.few_labels.update(dict(train_examples=200, num_steps=10, eval_every=5, eval_examples=128))
    else:
        common.check_variant(arg, "tiny")
    return c

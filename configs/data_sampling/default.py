"""Data sampling on MNIST-5k (MLP, 3 seeds): score-pruned subsets vs a random subset of the same size,
InfoBatch dynamic pruning vs full data; SemDeDup on MiniLM embeddings of tweets.

    python -m leanjax.experiments.data_sampling                                          # ~10-20 min, 2 cores
    python -m leanjax.experiments.data_sampling --config configs/data_sampling/default.py:tiny   # 96 s, load ~15

Headline: fraction_kept, subset.accuracy (config.mode), full.accuracy, random_subset.accuracy,
dynamic.compute_saved, dynamic.accuracy, dedup.removed_fraction.
Expected (tiny): every headline key, fraction_kept 0.5; accuracies from 2 epochs of a tiny MLP.
"""

import ml_collections

from configs import common

SCORES = ("el2n_avg", "el2n", "loss", "margin", "forgetting")  # ScoreStore fields
MODES = ("hardest", "easiest", "middle")
CHOICES = {"score": SCORES, "mode": MODES, "modes": MODES}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_seeds = 3
    c.hidden = (256,)
    c.dropout = 0.0
    c.batch_size = 64
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.schedule = "constant"
    c.epochs = 20
    c.score = "el2n_avg"          # a ScoreStore field: el2n_avg, el2n, loss, margin, forgetting
    c.fraction = 0.5
    c.mode = "hardest"            # the subset reported in the headline
    c.modes = ("hardest", "easiest", "middle")
    c.prune_ratio = 0.5           # InfoBatch: share of well-learned examples skipped each epoch
    c.anneal_fraction = 0.125     # InfoBatch: the last epochs train on all data
    c.dedup = ml_collections.ConfigDict(dict(num_texts=3000, max_len=48, batch_size=128, threshold=0.9,
                                             num_clusters=10))
    if arg == "tiny":
        c.num_seeds = 1
        c.hidden = (32,)
        c.epochs = 3
        c.modes = ("hardest",)
        c.dedup.update(dict(num_texts=64, max_len=16, batch_size=64, num_clusters=2))
    else:
        common.check_variant(arg, "tiny")
    return c

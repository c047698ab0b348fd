"""prune: dense vs 50/75/90% unstructured, 2:4 (packed) and 50% structured (compacted), CNN and MiniLM.

    python -m leanjax.experiments.prune --workdir runs/prune                    # ~47 min (26 before the regime arms)
    python -m leanjax.experiments.prune --config configs/prune/default.py:tiny   # 150 s, quiet 2 cores

Budget (default): CNN(32, 64, dense 128) trained 600 steps, each arm fine-tuned 300 steps (batch 64);
MiniLM (6 layers, seq 48) fine-tuned 60 steps of batch 32 on 4,096 tweets, each arm 20 steps, evaluated
on the first 512 test tweets; MiniLM's regime arms (issue 19) fine-tune 180 steps to 75% (magnitude and
movement) beside a dense control of the same 180 steps. Goals: 75% unstructured within 1 point of dense; structured 50%
throughput_ratio >= 1.5. Measured figures: experiments/prune/README.md.
`:tiny`: CNN(4, 8), MiniLM's first layer at seq 16, a few steps: checks the wiring, not the claims. Its time
is compilation (3 train steps and 3 eval steps per model) and MiniLM checkpoints, not steps.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.models = ("cnn", "minilm")
    c.cnn = ml_collections.ConfigDict(dict(
        seed=0, features=(32, 64), dense=128, dropout=0.3, batch_size=64, learning_rate=2e-3, weight_decay=1e-4,
        dense_steps=600, prune_steps=300, prune_learning_rate=5e-4, ramp_fraction=0.6, update_every=10,
        eval_batch_size=250, throughput_batch=250, timing_rounds=5, long_steps=0))
    c.minilm = common.minilm_teacher(prune_steps=20, prune_learning_rate=5e-5, ramp_fraction=0.5, update_every=2,
                                     eval_batch_size=64, throughput_batch=64, timing_rounds=3,
                                     # issue 19's regime arms: 75% over 180 steps (ramp 2/3), magnitude vs movement
                                     long_steps=180, long_ramp_fraction=2 / 3, long_sparsity=0.75,
                                     long_learning_rate=1e-4, long_kd_alpha=0.5, long_kd_temperature=2.0,
                                     long_arms=("long_dense", "gradual", "gradual_kd", "movement"))
    if arg == "tiny":
        c.cnn.update(dict(features=(4, 8), dense=16, batch_size=32, dense_steps=20, prune_steps=6,
                          update_every=2, throughput_batch=100, timing_rounds=1))
        common.tiny_minilm_teacher(c.minilm, train_examples=32, eval_examples=16, prune_steps=2, update_every=1,
                                   eval_batch_size=16, throughput_batch=16, timing_rounds=1, long_steps=2)
    else:
        common.check_variant(arg, "tiny")
    return c

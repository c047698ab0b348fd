"""quantize: post-training int8 / int4 (W8A8 / W4A8 serving) of fine-tuned MiniLM vs f32 and Qwix.

    python -m leanjax.experiments.quantize                                         # ~15-20 min on 2 loaded cores
    python -m leanjax.experiments.quantize --config configs/quantize/default.py:tiny   # 35 s, quiet 2 cores

Budget (default): full fine-tune of MiniLM for 150 steps of batch 32 x 48 tokens on 6,000 random training
tweets (cached in the workdir), then every arm evaluated on 1,024 random test tweets and timed on one
batch of 64 x 48, alternating. Goals (the issue's): int8 size_ratio <= 0.26 with accuracy drop <= 0.5
point, int4 <= 0.14 with drop <= 1.5 points, int8 throughput_ratio >= 1.5, at least as accurate and fast
as Qwix; see experiments/quantize/README.md for what was measured.
`:tiny`: MiniLM's first layer, seq 16, 2 fine-tuning steps: checks the wiring only (6 min 22 s at load ~10
with the earlier 2-layer, 5-step `:tiny`).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.minilm_tweets()
    c.num_steps = 150
    c.warmup_steps = 15
    c.learning_rate = 5e-5
    c.int4_group_size = 128        # 64 would cost 0.14+ of f32 in scales alone; 384 and 1536 divide by 128
    c.train_examples = 6000
    c.eval_examples = 1024
    c.timing_rounds = 5
    # int8_sweep: (batch, seq) shapes at which W8A8 and f32 serving are timed side by side.
    c.serve_shapes = ((8, 16), (64, 48), (256, 48), (64, 128))

    if arg == "tiny":
        common.tiny_minilm_tweets(c, num_steps=2, train_examples=64, eval_examples=64, timing_rounds=1, log_every=5)
        c.serve_shapes = ((4, 8), (8, 16))
    else:
        common.check_variant(arg, "tiny")
    return c

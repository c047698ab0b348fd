"""distill: MiniLM (6 layers, fine-tuned on tweets) -> a 2-layer, 8k-vocabulary student, vs labels alone.

    python -m leanjax.experiments.distill --workdir runs/distill                       # ~30 min, 2 loaded cores
    python -m leanjax.experiments.distill --config configs/distill/default.py:tiny   # 60 s, quiet 2 cores

Budget (default): teacher fine-tuned 60 steps of batch 32 x 48 tokens on 4,096 tweets; each student arm
100 steps of batch 32 on the same tweets; accuracy on the first 512 test tweets. Goals: a student with
<= 1/3 of the teacher's params retains >= 97% of its accuracy and beats the label-only student.
Measured figures: experiments/distill/README.md.
`:tiny`: a 1-layer teacher, 1-layer student, seq 16, 2 steps each: checks the wiring, not the claims (its time
is 5 train-step compilations, one per arm).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.teacher = common.minilm_teacher()
    c.student_layers = 2
    c.student_vocab = 8192
    c.student_steps = 100
    c.student_learning_rate = 1e-4
    c.batch_size = 32
    c.alpha = 0.5
    c.temperature = 2.0
    c.topk = 2
    c.eval_batch_size = 64
    c.throughput_batch = 64
    c.timing_rounds = 3
    # Regime arm (issue 19): few labels, the rest of the training tweets unlabelled and teacher-labelled.
    c.few_labels = ml_collections.ConfigDict()
    c.few_labels.labels = 256            # of the teacher's 4,096 training tweets
    c.few_labels.sweep = ((1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (2.0, 0.5))   # (temperature, alpha)
    if arg == "tiny":
        common.tiny_minilm_teacher(c.teacher, train_examples=64, eval_examples=32)
        c.student_layers = 1
        c.student_vocab = 512
        c.student_steps = 2
        c.batch_size = 8
        c.eval_batch_size = 32
        c.throughput_batch = 16
        c.timing_rounds = 1
        c.few_labels.labels = 16
        c.few_labels.sweep = ((2.0, 1.0),)
    else:
        common.check_variant(arg, "tiny")
    return c

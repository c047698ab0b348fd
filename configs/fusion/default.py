"""Fusion: the Transformer LM train step jitted (XLA fusion) vs op by op, and vs PyTorch on this CPU.

    python -m leanjax.experiments.fusion                                         # ~15 min on 2 loaded cores
    python -m leanjax.experiments.fusion --config configs/fusion/default.py:tiny  # ~1 min of CPU
    pip install torch==2.13.0   # the optional `bench` extra; without it the torch ratios are NaN

Goals (issue 6, default: 4 layers, D=256, batch 16, seq 128, AdamW, f32): `jit_speedup` >= 5, `mfu` >= 0.5,
`torch_compile.throughput_ratio` >= 1. Measured under heavy load (experiments/fusion/README.md):
jit_speedup 1.21, fusions 824, bytes_ratio 0.22, mfu 0.157, torch_eager 2.59, torch_compile 2.28; an
earlier, quieter measurement (ENVIRONMENT.md) had jit at 0.58x torch.compile. Tiny: every headline key,
torch.compile NaN (disabled: its first compile alone takes minutes here)."""

import ml_collections

from configs import common

CHOICES = {"torch_device": ("auto", "cpu", "cuda")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16
    c.learning_rate = 1e-3
    c.weight_decay = 0.0
    c.schedule = "constant"  # with no clipping: what torch.optim.AdamW does
    c.clip_norm = None
    c.model = ml_collections.ConfigDict(dict(
        tokenizer="char", seq_len=128, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024))
    c.rounds = 10          # timed steps per variant, alternating jit / torch eager / torch.compile (median)
    c.eager_steps = 2      # timed op-by-op (jax.disable_jit) steps: each is slow
    c.torch = True         # run the PyTorch side (needs torch installed; NaN ratios otherwise)
    c.torch_compile = True
    c.torch_device = "auto"  # 'auto': CUDA when JAX runs on a GPU and torch sees one, else the CPU

    if arg == "tiny":
        c.batch_size = 4
        c.model.seq_len = 32
        c.model.hidden_size = 32
        c.model.num_layers = 1
        c.model.intermediate_size = 64
        c.rounds = 3
        c.eager_steps = 1
        c.torch_compile = False  # inductor's first compile alone takes minutes on 2 loaded cores
    else:
        common.check_variant(arg, "tiny")
    return c

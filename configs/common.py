"""What the experiment configs share, the way big_vision's configs share `configs/common.py`.

A config file imports it (`from configs import common`; `leanjax.experiments._launch` puts the repository
root on `sys.path` when it loads a config) and starts from one of these blocks instead of repeating it:

- `minilm_tweets(**keys)`: MiniLM (all-MiniLM-L6-v2, 3-way head) fine-tuned on tweet sentiment, as
  `finetune`, `lora` and `quantize` train it; `tiny_minilm_tweets(c, **keys)` shrinks it for `:tiny`.
- `minilm_teacher(**keys)`: the fine-tuned MiniLM that `prune` and `distill` start from (a sub-config);
  `tiny_minilm_teacher(c, **keys)` shrinks it.
- `check_variant(arg, *known)`: the error for an unknown `:variant`.

Each function takes the experiment's own keys as keyword arguments (added or replacing the shared ones), so
the block and its exceptions read in one place.
"""

import ml_collections

_MINILM_TWEETS = dict(
    seed=0,
    num_layers=6,        # MiniLM's first `num_layers` layers (6 = all)
    seq_len=48,          # covers 99% of the tweets' MiniLM tokens
    dropout=0.1,
    batch_size=32,
    weight_decay=0.01,
    eval_batch_size=64,
    log_every=10,
    progress=True,
)
_TINY_MINILM_TWEETS = dict(num_layers=1, seq_len=16, batch_size=8, warmup_steps=1, eval_batch_size=32,
                           progress=False)

_MINILM_TEACHER = dict(seed=0, num_layers=6, seq_len=48, batch_size=32, learning_rate=5e-5, num_steps=60,
                       train_examples=4096, eval_examples=512)
_TINY_MINILM_TEACHER = dict(num_layers=1, seq_len=16, batch_size=8, num_steps=2)


def minilm_tweets(**keys) -> ml_collections.ConfigDict:
    """A config with MiniLM-on-tweets' shared keys, then `keys` (the experiment's own, or replacements)."""
    return ml_collections.ConfigDict({**_MINILM_TWEETS, **keys})


def tiny_minilm_tweets(c: ml_collections.ConfigDict, **keys) -> None:
    """Shrinks a `minilm_tweets` config in place for `:tiny` (MiniLM's first layer, seq 16, batch 8), then
    sets `keys`."""
    c.update({**_TINY_MINILM_TWEETS, **keys})


def minilm_teacher(**keys) -> ml_collections.ConfigDict:
    """The sub-config of the fine-tuned MiniLM that `leanjax.experiments._minilm.finetuned_minilm` builds."""
    return ml_collections.ConfigDict({**_MINILM_TEACHER, **keys})


def tiny_minilm_teacher(c: ml_collections.ConfigDict, **keys) -> None:
    """Shrinks a `minilm_teacher` sub-config in place for `:tiny` (one layer, seq 16, 2 steps), then sets
    `keys`."""
    c.update({**_TINY_MINILM_TEACHER, **keys})


def check_variant(arg: str | None, *known: str) -> None:
    """Raise `ValueError` for a `:variant` that is neither the default nor one of `known`."""
    if arg not in (None, "", "default", *known):
        use = ", ".join(repr(k) for k in known)
        raise ValueError(f"unknown config variant {arg!r}: use {use + ' or ' if use else ''}nothing")

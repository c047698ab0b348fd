"""The baseline model for the experiments (`baseline`, `async_eval`): the MNIST-5k CNN or the Shakespeare
causal LM that `config.task` names, with its loss, metrics and data sources.
"""

from __future__ import annotations

from flax import nnx

from leanjax import data, losses
from leanjax.experiments._build import Build
from leanjax.experiments._launch import ConfigError, config_optimizer
from leanjax.models import CNN, CausalLM, TransformerConfig, functional


def build(config) -> Build:
    """Model, loss, metrics, optimizer and data sources for `config.task`."""
    run = dict(tx=config_optimizer(config), seed=config.seed, batch_size=config.batch_size,
               eval_batch_size=config.eval_batch_size, num_steps=config.num_steps)
    rngs = nnx.Rngs(config.seed)
    if config.task == "cnn":
        model = CNN(10, features=tuple(config.cnn.features), dense=config.cnn.dense,
                    dropout=config.cnn.dropout, image_size=28, rngs=rngs)
        apply_fn, params = functional(model)
        return Build(params=params, loss=losses.classification_loss(apply_fn, inputs="image"),
                     metrics=losses.classification_metrics(apply_fn, inputs="image"),
                     train=data.load("mnist5k", "train"), eval=data.load("mnist5k", "test"), **run)
    if config.task == "lm":
        lm = config.lm
        train_src = data.lm_source("shakespeare", "train", seq_len=lm.seq_len, tokenizer=lm.tokenizer)
        eval_src = data.lm_source("shakespeare", "validation", seq_len=lm.seq_len, tokenizer=lm.tokenizer)
        model = CausalLM(TransformerConfig(
            vocab_size=train_src.vocab_size, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
            num_heads=lm.num_heads, intermediate_size=lm.intermediate_size,
            max_position_embeddings=lm.seq_len, type_vocab_size=0, dropout=lm.dropout, causal=True,
            scan_layers=lm.scan_layers, remat=lm.remat), rngs=rngs)
        apply_fn, params = functional(model)
        return Build(params=params, loss=losses.lm_loss(apply_fn), metrics=losses.lm_metrics(apply_fn),
                     train=train_src, eval=eval_src, **run)
    raise ConfigError(f"config.task={config.task!r}: use 'cnn' or 'lm'")

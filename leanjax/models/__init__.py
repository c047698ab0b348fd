"""leanjax models: Flax NNX modules holding only `nnx.Param`s, and their functional form.

See docs/architecture.md ("Params and models") for the contract.
"""

from leanjax.models.cnn import CNN
from leanjax.models.functional import functional
from leanjax.models.mlp import MLP
from leanjax.models.remat import CHECKPOINT_NAMES, checkpoint_policy
from leanjax.models.transformer import (
    CausalLM,
    SequenceClassifier,
    Transformer,
    TransformerConfig,
    l2_normalize,
    mean_pool,
)

__all__ = [
    "CNN", "CHECKPOINT_NAMES", "CausalLM", "MLP", "SequenceClassifier", "Transformer", "TransformerConfig",
    "checkpoint_policy", "functional", "l2_normalize", "mean_pool",
]

"""leanjax: cheap training and serving in JAX, each efficiency strategy a composable, measured tool.

The flat API below is what most code needs. Submodules that pull heavy dependencies (`leanjax.data`
with TFDS/grain, `leanjax.tune` with Optuna) are imported on first attribute access, so
`import leanjax.transforms` stays light.
"""

import importlib

from leanjax.losses import classification_loss, classification_metrics, cross_entropy, lm_loss, lm_metrics
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import evaluate, make_eval_step, make_train_step
from leanjax.trees import combine, count_params, partition

__version__ = "0.1.0"

_LAZY = ("audit", "data", "experiments", "models", "parallel", "train", "transforms", "tune", "weights")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"leanjax.{name}")
    raise AttributeError(f"module 'leanjax' has no attribute {name!r}")


__all__ = ["TrainState", "classification_loss", "classification_metrics", "combine", "count_params",
           "cross_entropy", "evaluate", "lm_loss", "lm_metrics", "make_eval_step", "make_optimizer",
           "make_train_step", "partition", *_LAZY]

"""The training state: a plain pytree of (step, params, opt_state, rng).

Nothing here is a method that trains: the train step (`leanjax.step`) is a pure function from one state
to the next, so the state checkpoints, shards and vmaps like any other pytree.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from leanjax.trees import partition


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: optax.OptState
    rng: jax.Array

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array,
               trainable: Any | None = None) -> "TrainState":
        """Optimizer state is built for the trainable leaves only: frozen ones carry none.

        The RNG is stored as raw key data (uint32), which checkpoints like any array.
        """
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        trainable_params, _ = partition(params, trainable)
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   opt_state=tx.init(trainable_params), rng=rng)

"""`Build`, the typed result of an experiment's `build(config)`: bad pieces fail when it is made, naming the
field, and `--audit` takes nothing else (no config-key fallbacks)."""

import jax.numpy as jnp
import optax
import pytest

from leanjax.experiments import _audit
from leanjax.experiments._build import Build
from leanjax.experiments._launch import load_config


def _loss(params, batch, rng):
    return jnp.mean((batch["x"] @ params["w"]) ** 2), {}


def _parts(**changes):
    parts = dict(params={"w": jnp.ones((3, 2))}, loss=_loss, tx=optax.sgd(0.1), seed=0, batch_size=4, num_steps=10,
                 train_batch={"x": jnp.ones((4, 3))})
    return {**parts, **changes}


def test_build_names_the_missing_or_bad_field():
    with pytest.raises(ValueError, match="train"):
        Build(**_parts(train_batch=None))
    with pytest.raises(ValueError, match="num_steps"):
        Build(**_parts(num_steps=0))
    with pytest.raises(ValueError, match="batch_size"):
        Build(**_parts(batch_size=2.5))
    with pytest.raises(TypeError, match="loss"):
        Build(**_parts(loss="mse"))
    with pytest.raises(TypeError, match="tx"):
        Build(**{k: v for k, v in _parts().items() if k != "tx"})


def test_audit_takes_a_build_and_reads_its_fields_not_the_config():
    config = load_config("configs/baseline/default.py:tiny")
    with pytest.raises(TypeError, match="must return a leanjax.experiments._build.Build"):
        _audit.subject(config, lambda c: _parts())
    # The config's batch size and seed are not consulted: the Build's are.
    subject = _audit.subject(config, lambda c: Build(**_parts(seed=7)))
    assert subject.seed == 7 and subject.train_batch["x"].shape == (4, 3)
    assert subject.serve_batch is subject.train_batch  # no eval source: the train batch is served

"""leanjax.audit.timing: interleaved timing of several variants."""

import functools
import time

import jax
import jax.numpy as jnp
import pytest

from leanjax.audit import time_interleaved


def test_variants_alternate_and_medians_order_them():
    calls = []

    def sleeper(name, seconds):
        calls.append(name)
        time.sleep(seconds)
        return jnp.zeros(())

    medians = time_interleaved({"slow": functools.partial(sleeper, "slow", 0.02),
                                "fast": functools.partial(sleeper, "fast", 0.002)}, repeats=3, iters=2, warmup=2)
    assert list(medians) == ["slow", "fast"]
    assert medians["slow"] >= 0.02 and medians["fast"] >= 0.002
    assert medians["slow"] > medians["fast"]
    # One probe call each, then (warmup - 1) + repeats rounds of `iters` calls each, variant after variant.
    assert calls == ["slow", "fast"] + (["slow"] * 2 + ["fast"] * 2) * 4


def test_donating_steps_get_copies_and_the_callers_arrays_survive():
    step = jax.jit(lambda state, x: (state + x, x.sum()), donate_argnums=0)
    state, x = jnp.ones((8, 8)), jnp.ones((8, 8))
    medians = time_interleaved({"step": (step, (state, x)), "list_args": (jax.jit(jnp.dot), [x, x])}, repeats=2)
    assert set(medians) == {"step", "list_args"} and all(t > 0 for t in medians.values())
    assert not state.is_deleted() and float(state.sum()) == 64.0


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="repeats and iters must be >= 1"):
        time_interleaved({"a": lambda: 0}, repeats=0)
    with pytest.raises(ValueError, match="'abstract'.*ShapeDtypeStruct"):
        time_interleaved({"abstract": (jnp.sin, (jax.ShapeDtypeStruct((2,), jnp.float32),))})
    with pytest.raises(TypeError, match="variant 'x' must be"):
        time_interleaved({"x": 3})

"""Many LoRA adapters over one base: `stack_adapters` + `with_adapter_ids`, each request its own adapter in
one compiled program, over plain, NF4 and scanned bases."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leanjax.transforms as T

KEY = jax.random.key(0)


def _adapter(params, seed, **kw):
    lp = T.lora(params, "w", rank=2, key=jax.random.key(seed), layout=T.stacked_io, **kw)

    def one(x):
        if isinstance(x, T.LoRA):
            return dataclasses.replace(x, b=jax.random.normal(jax.random.key(100 + seed), x.b.shape))
        return x
    return jax.tree.map(one, lp, is_leaf=T.is_typed)


def _mlp(p, x):
    return jnp.tanh(x @ p["w"])


def _scanned(p, x):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, p["w"])[0]


@pytest.mark.parametrize("shape,fn,quantized", [((8, 8), _mlp, False), ((3, 8, 8), _scanned, True)])
def test_each_request_gets_its_adapter(shape, fn, quantized):
    params = {"w": jax.random.normal(KEY, shape) / 3}
    if quantized:
        params = T.quantize(params, "w", bits=4, scheme="nf4", group_size=4)
    trees = [_adapter(params, seed) for seed in range(4)]
    stacked = T.stack_adapters(trees)
    assert stacked["w"].a.shape == (*shape[:-2], 4, 8, 2) and stacked["w"].n_adapters == 4
    assert stacked["w"].base is trees[0]["w"].base  # one base, not one per adapter
    ids = jnp.array([3, 0, 0, 2, 1])
    x = jax.random.normal(KEY, (5, 8))
    serve = jax.jit(T.apply(lambda p, x, ids: fn(T.with_adapter_ids(p, ids), x)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing materialises a full weight
        out = serve(stacked, x, ids)
    for row, i in enumerate(ids.tolist()):
        expected = T.apply(fn)(trees[i], x[row:row + 1])[0]
        np.testing.assert_allclose(out[row], expected, rtol=1e-5, atol=1e-5)
    # Other ids: the same compiled program.
    before = serve._cache_size()
    serve(stacked, x, jnp.array([1, 1, 2, 3, 0]))
    assert serve._cache_size() == before


def test_adapter_ids_errors():
    params = {"w": jax.random.normal(KEY, (8, 8))}
    stacked = T.stack_adapters([_adapter(params, 0), _adapter(params, 1)])
    with pytest.raises(ValueError, match="with_adapter_ids"):
        T.apply(_mlp)(stacked, jnp.ones((2, 8)))
    with pytest.raises(ValueError, match="1-D int"):
        T.with_adapter_ids(stacked, jnp.ones((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="leading axis"):
        T.apply(_mlp)(T.with_adapter_ids(stacked, jnp.array([0, 1, 1])), jnp.ones((2, 8)))
    with pytest.raises(ValueError, match="differs"):
        T.stack_adapters([_adapter(params, 0), T.lora(params, "w", rank=3, key=KEY)])
    with pytest.raises(ValueError, match="DoRA"):
        T.stack_adapters([_adapter(params, 0, variant="dora")] * 2)

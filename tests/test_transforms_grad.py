"""`T.value_and_grad` / `T.grad`: gradients of a typed tree's trainable leaves only (plain jax.grad over
a QLoRA tree fails on its int codes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leanjax.transforms as T

KEY = jax.random.key(0)


def _qlora():
    params = {"w": jax.random.normal(KEY, (16, 8)), "bias": jnp.zeros(8)}
    q = T.quantize(params, "w", bits=4, scheme="nf4", group_size=8)
    return T.lora(q, "w", rank=2, key=KEY)


def loss(p, x):
    return jnp.sum(jnp.tanh(x @ p["w"] + p["bias"]) ** 2)


def test_plain_jax_grad_fails_and_value_and_grad_differentiates_adapters_only():
    q = _qlora()
    x = jax.random.normal(KEY, (4, 16))
    with pytest.raises(TypeError, match="int|uint|float0|real"):
        jax.grad(T.apply(loss))(q, x)
    value, grads = jax.jit(T.value_and_grad(loss))(q, x)
    np.testing.assert_allclose(value, loss(T.merge(q), x), rtol=1e-5)
    w = grads["w"]
    assert w.base is None or all(leaf is None for leaf in jax.tree.leaves(w.base))
    assert w.a.shape == (16, 2) and w.b.shape == (2, 8)
    # B starts at 0, so dL/dA = 0 and dL/dB = s * A^T (x^T dL/dy): check against the merged weight's grad.
    dw = jax.grad(lambda w: loss({"w": w, "bias": q["bias"]}, x))(T.merge(q)["w"])
    np.testing.assert_allclose(w.b, q["w"].scale * q["w"].a.T @ dw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], jax.grad(lambda b: loss({"w": T.merge(q)["w"], "bias": b}, x))(
        q["bias"]), rtol=1e-5, atol=1e-6)
    frozen_bias = T.grad(loss, freeze_plain=True)(q, x)
    assert frozen_bias["bias"] is None


def test_grad_has_aux():
    q = _qlora()
    x = jax.random.normal(KEY, (4, 16))
    grads, aux = T.grad(lambda p, x: (loss(p, x), 7.0), has_aux=True)(q, x)
    assert aux == 7.0 and grads["w"].a.shape == (16, 2)

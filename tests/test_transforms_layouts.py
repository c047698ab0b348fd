"""Kernel layouts: stated explicitly, PEFT-style adapters over flattened inputs/outputs, fan-in, export
and quantization axes that follow the layout."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leanjax.transforms as T

KEY = jax.random.key(0)


def _trained(params):
    def one(x):
        if isinstance(x, T.LoRA):
            return dataclasses.replace(x, b=jax.random.normal(jax.random.key(3), x.b.shape, x.b.dtype))
        return x
    return jax.tree.map(one, params, is_leaf=T.is_typed)


def test_3d_kernel_without_layout_is_an_error_naming_shape_and_choices():
    # Before: lm1b's q kernel [embed, heads, head_dim] silently became 'embed' stacked layers.
    p = {"query": jnp.ones((16, 2, 4))}
    with pytest.raises(T.LayoutError, match=r"query.*\(16, 2, 4\).*'ioo'.*'oio'"):
        T.lora(p, "query", rank=2, key=KEY)
    with pytest.raises(T.LayoutError, match="names 2 axes"):
        T.lora(p, "query", rank=2, key=KEY, layout="io")
    with pytest.raises(T.LayoutError, match="at least one"):
        T.lora(p, "query", rank=2, key=KEY, layout="iii")


@pytest.mark.parametrize("layout,shape,eq,x_shape,variant", [
    ("ioo", (16, 2, 4), "bi,ihd->bhd", (3, 16), "lora"),     # lm1b / DenseGeneral q,k,v
    ("oio", (2, 16, 4), "bi,hid->bhd", (3, 16), "dora"),     # Gemma q einsum kernel
    ("iio", (2, 4, 16), "bhd,hdo->bo", (3, 2, 4), "dora"),   # attention output projection
    ("sio", (3, 16, 8), "bi,lio->lbo", (3, 16), "lora"),     # scanned layers: one adapter per layer
])
def test_multi_axis_layouts_are_peft_adapters_over_flattened_axes(layout, shape, eq, x_shape, variant):
    p = {"w": jax.random.normal(KEY, shape)}
    lp = _trained(T.lora(p, "w", rank=2, key=KEY, layout=layout, variant=variant))
    w = lp["w"]
    n_stack = layout.count("s")
    fan_in = math.prod(n for n, k in zip(shape, layout) if k == "i")
    fan_out = math.prod(n for n, k in zip(shape, layout) if k == "o")
    stack = math.prod(shape[:n_stack])
    # One A [in_flat, r] and one B [r, out_flat] per layer, never per head: for lm1b's [512, 8, 64] q at
    # r=8 that is 8192 params, not the 2.25x-the-kernel adapters of the old default.
    assert w.a.size == stack * fan_in * 2 and w.b.size == stack * 2 * fan_out
    assert float(jnp.abs(w.a).max()) <= 1 / math.sqrt(fan_in)  # the init bound uses the layout's fan-in
    x = jax.random.normal(KEY, x_shape)
    f = lambda p, x: jnp.einsum(eq, x, p["w"])  # noqa: E731
    np.testing.assert_allclose(T.apply(f)(lp, x), f(T.merge(lp), x), rtol=1e-5, atol=1e-5)


def test_equinox_out_in_layout_fan_in_export_and_quant_axis(tmp_path):
    """[out, in] (Equinox/PyTorch): fan-in is the last axis, PEFT tensors are not transposed wrongly, and
    quantization scales are per output row."""
    out_dim, in_dim = 6, 24
    p = {"linear": {"weight": jax.random.normal(KEY, (out_dim, in_dim))}}
    lp = _trained(T.lora(p, r"linear/weight", rank=2, key=KEY, layout="oi"))
    w = lp["linear"]["weight"]
    assert w.a.shape == (in_dim, 2) and w.b.shape == (2, out_dim)
    assert float(jnp.abs(w.a).max()) <= 1 / math.sqrt(in_dim)
    assert float(jnp.abs(w.a).max()) > 1 / math.sqrt(out_dim) / 2 or in_dim > out_dim
    x = jax.random.normal(KEY, (3, in_dim))
    f = lambda p, x: x @ p["linear"]["weight"].T  # noqa: E731
    np.testing.assert_allclose(T.apply(f)(lp, x), f(T.merge(lp), x), rtol=1e-5, atol=1e-5)
    written = T.export_peft(lp, str(tmp_path))
    a, b = written["base_model.model.linear.lora_A.weight"], written["base_model.model.linear.lora_B.weight"]
    assert a.shape == (2, in_dim) and b.shape == (out_dim, 2)
    # torch's Linear computes x @ (W + s * B @ A).T with W [out, in]: the same layout as this weight.
    np.testing.assert_allclose(w.scale * b @ a, T.merge(lp)["linear"]["weight"] - p["linear"]["weight"],
                               rtol=1e-5, atol=1e-6)
    q = T.quantize(p, r"linear/weight", bits=8, layout="oi", group_size=8)["linear"]["weight"]
    assert q.axis == -1 and q.scale.shape == (out_dim, in_dim // 8)
    assert T.quantize(lp, r"linear/weight", bits=8)["linear"]["weight"].base.axis == -1  # from the LoRA
    assert T.quantize(p, r"linear/weight", bits=8)["linear"]["weight"].axis == -2  # no layout: [in, out]


def test_layout_function_for_mixed_trees():
    p = {"stacked": jnp.ones((3, 8, 4)), "plain": jnp.ones((8, 4))}
    lp = T.lora(p, ".*", rank=2, key=KEY, layout=T.stacked_io)
    assert lp["stacked"].layout == "sio" and lp["stacked"].a.shape == (3, 8, 2)
    assert lp["plain"].layout == "io" and lp["plain"].a.shape == (8, 2)

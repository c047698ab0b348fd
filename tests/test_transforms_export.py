"""Leaving training: HF PEFT adapters, merged safetensors, and merge -> re-quantize for serving."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import leanjax.transforms as T

KEY = jax.random.key(0)


def _params():
    k = jax.random.split(KEY, 3)
    return {
        "attention": {"query": {"kernel": jax.random.normal(k[0], (8, 6)), "bias": jnp.zeros(6)},
                      "value": {"kernel": jax.random.normal(k[1], (8, 6)), "bias": jnp.zeros(6)}},
        "stack": {"kernel": jax.random.normal(k[2], (3, 8, 4))},
    }


def _trained(params):
    def one(x):
        if isinstance(x, T.LoRA):
            return dataclasses.replace(x, b=jax.random.normal(jax.random.key(3), x.b.shape))
        return x
    return jax.tree.map(one, params, is_leaf=T.is_typed)


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_peft_names_shapes_and_config(tmp_path, variant):
    lp = _trained(T.lora(_params(), r"attention/.*/kernel", rank=2, alpha=4, key=KEY, variant=variant))
    written = T.export_peft(lp, str(tmp_path), base_model_name_or_path="bert-tiny")
    loaded = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert set(loaded) == set(written)
    w = lp["attention"]["query"]["kernel"]
    # torch Linear layout: lora_A [r, in], lora_B [out, r]; delta = B @ A is the kernel's delta transposed.
    prefix = "base_model.model.attention.query"
    a, b = loaded[f"{prefix}.lora_A.weight"], loaded[f"{prefix}.lora_B.weight"]
    assert a.shape == (2, 8) and b.shape == (6, 2)
    np.testing.assert_allclose(w.scale * (b @ a).T, w.delta(), rtol=1e-6)
    config = json.load(open(os.path.join(tmp_path, "adapter_config.json")))
    assert config["r"] == 2 and config["lora_alpha"] == 4 and config["peft_type"] == "LORA"
    assert config["target_modules"] == ["query", "value"]
    assert config["use_rslora"] == (variant == "rslora") and config["use_dora"] == (variant == "dora")
    if variant == "dora":
        np.testing.assert_array_equal(loaded[f"{prefix}.lora_magnitude_vector"], w.magnitude)


def test_peft_stacked_layers_need_and_use_a_module_name(tmp_path):
    lp = _trained(T.lora(_params(), r"stack/kernel", rank=2, key=KEY, layout="sio"))
    with pytest.raises(ValueError, match="module_name"):
        T.export_peft(lp, str(tmp_path))
    written = T.export_peft(lp, str(tmp_path), module_name=lambda path, i: f"encoder.layer.{i[0]}.dense")
    assert sorted(written) == sorted(f"base_model.model.encoder.layer.{i}.dense.lora_{ab}.weight"
                                     for i in range(3) for ab in "AB")
    np.testing.assert_array_equal(written["base_model.model.encoder.layer.1.dense.lora_A.weight"],
                                  lp["stack"]["kernel"].a[1].T)


def test_merged_safetensors(tmp_path):
    lp = _trained(T.lora(T.quantize(_params(), r".*kernel", bits=8), r"attention/.*/kernel", rank=2, key=KEY))
    path = os.path.join(tmp_path, "model.safetensors")
    T.export_merged(lp, path)
    loaded = load_file(path)
    np.testing.assert_allclose(loaded["attention.query.kernel"], T.merge(lp)["attention"]["query"]["kernel"])
    # A key map gives HF names and layouts.
    T.export_merged(lp, path, to_names=lambda m: {"q.weight": m["attention"]["query"]["kernel"].T})
    assert load_file(path)["q.weight"].shape == (6, 8)


def test_merge_then_requantize_for_serving():
    params = _params()
    lp = _trained(T.lora(T.quantize(params, r".*kernel", bits=4, scheme="nf4", group_size=4),
                         r"attention/.*/kernel", rank=2, key=KEY))
    served = T.requantize(lp)
    q = served["attention"]["query"]["kernel"]
    assert isinstance(q, T.NF4) and q.group_size == 4 and q.axis == -2
    assert T.weight_bytes(served) < T.weight_bytes(lp)
    x = jax.random.normal(KEY, (3, 8))
    f = lambda p, x: x @ p["attention"]["query"]["kernel"]  # noqa: E731
    exact = f(T.merge(lp), x)
    # Re-quantizing the merged weight costs one more NF4 rounding, no more.
    err = np.abs(T.apply(f)(served, x) - exact).max()
    base_err = np.abs(f(T.merge(T.quantize(params, r".*kernel", bits=4, scheme="nf4", group_size=4)), x)
                      - f(params, x)).max()
    assert err < 2 * base_err

"""The quantize experiment: its Qwix arm and quantized arms on a tiny model, and `:tiny` end to end."""

import builtins
import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from leanjax import transforms
from leanjax.experiments import _launch, _minilm, quantize
from leanjax.models import SequenceClassifier, TransformerConfig, functional

HEADLINE = {"int8.size_ratio", "int4.size_ratio", "int8.accuracy_delta", "int4.accuracy_delta",
            "int8.throughput_ratio", "int4.throughput_ratio", "qwix_int8.accuracy_delta",
            "qwix_int8.throughput_ratio", "int8_sweep.best_throughput_ratio", "int8_sweep.worst_throughput_ratio",
            "int8_split.int8_dot_speedup", "int8_split.layer_speedup", "int8_split.quantize_share",
            "int8_split.rescale_share"}


def _model():
    config = TransformerConfig(vocab_size=128, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128,
                               max_position_embeddings=16, dropout=0.0)
    return functional(SequenceClassifier(config, 3, rngs=nnx.Rngs(0)))


def test_quantized_arms_serve_close_to_f32():
    apply_fn, params = _model()
    ids = jax.random.randint(jax.random.key(1), (4, 16), 0, 128)
    mask = jnp.ones((4, 16), bool)
    ref = apply_fn(params, ids, mask)
    int8 = _minilm.quantized(params, 8, None, serve=True)
    assert isinstance(int8["encoder"]["layers"][0]["intermediate"]["kernel"], transforms.W8A8)
    assert isinstance(int8["encoder"]["embeddings"]["word"]["embedding"], transforms.Int8)
    out = jax.jit(transforms.apply(apply_fn))(int8, ids, mask)
    assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 1e-3
    assert transforms.weight_bytes(int8) < 0.3 * transforms.weight_bytes(params)


def test_qwix_arm_or_a_reason_without_qwix(monkeypatch):
    apply_fn, params = _model()
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (
        (_ for _ in ()).throw(ImportError(name)) if name == "qwix" else real_import(name, *a, **k)))
    assert quantize.qwix_int8(params) == (None, pytest.approx(quantize.qwix_int8(params)[1]))
    assert "not installed" in quantize.qwix_int8(params)[1]
    monkeypatch.undo()
    pytest.importorskip("qwix")
    qparams, reason = quantize.qwix_int8(params)
    assert reason is None
    ids = jax.random.randint(jax.random.key(1), (4, 16), 0, 128)
    ref = apply_fn(params, ids)
    out = jax.jit(transforms.apply(apply_fn))(qparams, ids)
    assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 1e-3


# In `make test`: the `:tiny` contract (every headline key) at ~30-35 s on 2 quiet cores (-O0).
def test_tiny_writes_every_headline_key(tmp_path):
    code = _launch.main("quantize", quantize.run,
                        ["--config", "configs/quantize/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == HEADLINE
    assert summary["headline"]["int8.size_ratio"] <= 0.26
    assert all(math.isfinite(v) for k, v in summary["headline"].items() if not k.startswith("qwix"))
    sweep = summary["metrics"]["int8_sweep"]
    assert set(sweep) == {"4x8", "8x16"} and all(r["f32"] == 1.0 and r["int8"] > 0 for r in sweep.values())
    assert 0 < summary["headline"]["int8_split.quantize_share"] < 1

"""LLM fine-tuning arms (`leanjax.experiments._llm`) on a tiny scanned causal LM: params, masks, loss, peaks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leanjax import losses, transforms
from leanjax.experiments import _llm
from leanjax.models import functional
from leanjax.models.transformer import Transformer, TransformerConfig
from leanjax.optim import make_optimizer

CONFIG = TransformerConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                           max_position_embeddings=16, type_vocab_size=0, scan_layers=True, norm_first=True,
                           dropout=0.0, causal=True)
KERNELS = r"layers/.*kernel"


def _parts(**options):
    apply_fn, params = functional(Transformer(dataclasses.replace(CONFIG, **options), rngs=nnx.Rngs(0)))
    hidden = lambda p, b: apply_fn(p, b["inputs"])  # noqa: E731
    head = lambda p: (p["embeddings"]["word"]["embedding"], 0)  # noqa: E731
    return hidden, head, params


def _batch(b=2, t=16):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CONFIG.vocab_size, (b, t + 1)).astype(np.int32)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": rng.random((b, t)) < 0.5,
            "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)), "segment_ids": np.ones((b, t), np.int32)}


def test_arms_params_and_masks():
    _, _, params = _parts()
    kw = dict(kernels=KERNELS, rank=4, alpha=8.0, group_size=16, key=jax.random.key(0))
    full = _llm.arm_params(params, "full", **kw)
    assert all(jax.tree.leaves(_llm.trainable_mask(full, "full")))
    for arm in ("lora", "qlora"):
        p = _llm.arm_params(params, arm, **kw)
        kernel = p["layers"]["intermediate"]["kernel"]
        assert isinstance(kernel, transforms.LoRA)
        assert kernel.a.dtype == jnp.float32  # adapters train in f32
        assert isinstance(kernel.base, transforms.NF4) == (arm == "qlora")
        if arm == "lora":
            assert kernel.base.dtype == jnp.bfloat16
        assert p["embeddings"]["word"]["embedding"].dtype == jnp.bfloat16
        mask = _llm.trainable_mask(p, arm)
        assert mask["layers"]["intermediate"]["kernel"].a is True
        assert not any(jax.tree.leaves(mask["embeddings"]))
    with pytest.raises(ValueError, match="unknown arm"):
        _llm.arm_params(params, "dora", **kw)


def test_packed_loss_is_masked_plain_cross_entropy():
    hidden, head, params = _parts()
    batch = _batch()
    got, aux = _llm.packed_lm_loss(hidden, head, chunk_size=5)(params, batch, None)
    logits = hidden(params, batch) @ head(params)[0].T
    want = losses.masked_mean(losses.cross_entropy(logits, batch["targets"]), batch["loss_mask"])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert int(aux["tokens"]) == batch["loss_mask"].sum()


def test_compiled_peaks_order_from_abstract_shapes():
    tx = make_optimizer("adamw", learning_rate=1e-3)
    peaks = {}
    for arm in _llm.ARMS:
        hidden, head, params = _parts(remat="nothing" if arm == "qlora_remat" else "none",
                                      dtype=jnp.float32 if arm == "full" else jnp.bfloat16)
        abstract = jax.eval_shape(lambda p, a=arm: _llm.arm_params(p, a, kernels=KERNELS, rank=4, alpha=8.0,
                                                                   group_size=16, key=jax.random.key(0)), params)
        loss = _llm.packed_lm_loss(hidden, head, chunk_size=64)
        peaks[arm] = _llm.compiled_peak(loss, abstract, _llm.trainable_mask(abstract, arm), tx,
                                        _llm.abstract_batch(8, 16)).peak
    assert peaks["full"] > peaks["lora"] > peaks["qlora"] > peaks["qlora_remat"], peaks

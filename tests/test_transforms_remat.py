"""The quax rule for `jax.checkpoint`: a QLoRA model under remat computes what it computes without
remat, gradients included, and never materialises its quantized or LoRA weights."""

import warnings

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from leanjax import losses, transforms
from leanjax.models import SequenceClassifier, TransformerConfig, functional
from leanjax.trees import combine, partition


def _qlora_loss_and_grads(remat: str, scan_layers: bool):
    config = TransformerConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               max_position_embeddings=16, dropout=0.0, scan_layers=scan_layers, remat=remat)
    apply_fn, params = functional(SequenceClassifier(config, 3, rngs=nnx.Rngs(0)))
    params = transforms.quantize(params, r"encoder/.*kernel", bits=4, scheme="nf4", group_size=16)
    params = transforms.quantize(params, r".*word/embedding", bits=8, axis=-1)
    params = transforms.lora(params, r"encoder/.*(query|value)/kernel", rank=4, key=jax.random.key(1),
                             layout=transforms.stacked_io)
    mask = transforms.trainable(params, freeze_plain=True)
    train, frozen = partition(params, mask)
    loss_fn = losses.classification_loss(apply_fn, inputs=("input_ids", "attention_mask"))
    batch = {"input_ids": jax.random.randint(jax.random.key(2), (4, 16), 0, 64),
             "attention_mask": jnp.ones((4, 16), jnp.int32), "label": jnp.array([0, 1, 2, 0])}

    def loss(tp):
        return transforms.apply(loss_fn)(combine(tp, frozen), batch, jax.random.key(3))[0]

    return jax.jit(jax.value_and_grad(loss))(train)


# Stacked (scanned) weights are the path with its own slicing rules; unrolled layers run in `make test-slow`.
@pytest.mark.parametrize("scan_layers", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_remat_qlora_matches_no_remat_without_materialising(scan_layers):
    reference = _qlora_loss_and_grads("none", scan_layers)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="leanjax.transforms: no rule covers")
        remat = _qlora_loss_and_grads("nothing", scan_layers)
    chex.assert_trees_all_close(remat, reference, rtol=1e-5, atol=1e-6)
    assert any(jnp.any(g != 0) for g in jax.tree.leaves(remat[1]))


def test_remat_of_a_function_closing_over_nothing_typed_still_works():
    w = transforms.quantize({"w": jnp.linspace(-1, 1, 64).reshape(8, 8)}, "w")["w"]
    f = jax.checkpoint(lambda w, x: jnp.tanh(x @ w).sum(), policy=jax.checkpoint_policies.nothing_saveable)
    x = jnp.ones((2, 8))
    got = jax.jit(jax.grad(transforms.apply(f), argnums=1))(w, x)
    want = jax.grad(lambda x: jnp.tanh(x @ transforms.dense(w)).sum())(x)
    chex.assert_trees_all_close(got, want, rtol=1e-5)

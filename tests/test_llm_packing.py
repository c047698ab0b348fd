"""Packing through the decoder: a packed row gives each document the logits it has alone, and the loss mask
keeps user/system tokens out of the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leanjax.data import chat
from leanjax.experiments import _llm_model
from leanjax.models.generate import generate

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=8)


@pytest.mark.parametrize("family", ["llama-3.2-1b", "qwen2.5-0.5b", "gemma-2-2b"])
def test_packed_row_equals_documents_alone(family):
    config = _llm_model.sized(_llm_model.preset(family), **TINY)
    params = _llm_model.init_params(config, jax.random.key(0))
    # Norm scales away from their init, so a wrong offset or a swapped norm would show.
    params = jax.tree.map(lambda x: x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), params)
    rng = np.random.default_rng(0)
    docs = [(rng.integers(1, 64, n).astype(np.int32), np.ones(n, bool)) for n in (7, 5, 4)]
    packed = chat.pack(docs, seq_len=16)
    assert packed.inputs.shape == (1, 16) and packed.segment_ids.max() == 3
    got = _llm_model.logits(config, params, packed.inputs, packed.positions, packed.segment_ids)
    for s in range(1, 4):
        at = packed.segment_ids[0] == s
        alone = packed.inputs[:, at]
        n = alone.shape[1]
        want = _llm_model.logits(config, params, alone, np.arange(n)[None], np.ones((1, n), np.int32))
        np.testing.assert_allclose(got[0, at], want[0], atol=1e-5, rtol=1e-5)


def test_changing_one_document_leaves_the_others():
    config = _llm_model.sized(_llm_model.preset("llama-3.2-1b"), **TINY)
    params = _llm_model.init_params(config, jax.random.key(1))
    inputs = np.arange(1, 13, dtype=np.int32)[None]
    segments = np.array([[1] * 6 + [2] * 6], np.int32)
    positions = np.array([list(range(6)) * 2], np.int32)
    before = _llm_model.logits(config, params, inputs, positions, segments)
    changed = inputs.copy()
    changed[0, :6] = 40  # document 1 only
    after = _llm_model.logits(config, params, changed, positions, segments)
    np.testing.assert_array_equal(before[0, 6:], after[0, 6:])
    assert not np.allclose(before[0, :6], after[0, :6])


def test_loss_ignores_user_and_system_targets():
    """Changing a user-token target changes nothing; changing an assistant target changes the loss."""
    config = _llm_model.sized(_llm_model.preset("llama-3.2-1b"), **TINY)
    params = _llm_model.init_params(config, jax.random.key(2))
    loss_fn = _llm_model.loss_fn(config, chunk_size=8)
    docs = [(np.arange(1, 11, dtype=np.int32), np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 1], bool))]
    batch = chat.pack(docs, seq_len=12).batch(slice(None))
    base, aux = loss_fn(params, batch, None)
    assert int(aux["tokens"]) == 5  # targets 5..10 minus the user token at index 7
    user = dict(batch, targets=batch["targets"].copy())
    user["targets"][0, 0] = 33  # target of position 0 is token 2: a user token
    np.testing.assert_array_equal(loss_fn(params, user, None)[0], base)
    assistant = dict(batch, targets=batch["targets"].copy())
    assistant["targets"][0, 4] = 33  # target index 5: an assistant token
    assert not np.allclose(loss_fn(params, assistant, None)[0], base)


@pytest.mark.parametrize("family", ["llama-3.2-1b", "gemma-2-2b"])
def test_kv_cache_greedy_equals_recomputing(family):
    """Greedy decoding with the KV cache gives the tokens of recomputing the whole sequence each step."""
    config = _llm_model.sized(_llm_model.preset(family), **TINY)
    params = jax.tree.map(lambda x: x * 30 if x.ndim == 3 else x, _llm_model.init_params(config, jax.random.key(3)))
    prompts = np.random.default_rng(1).integers(1, 64, (2, 5)).astype(np.int32)
    got = generate(_llm_model.model(config, params), prompts.tolist(), max_new_tokens=6)
    seq = prompts
    for _ in range(6):
        t = seq.shape[1]
        last = _llm_model.logits(config, params, seq, np.tile(np.arange(t), (2, 1)), np.ones((2, t), np.int32))[:, -1]
        seq = np.concatenate([seq, np.asarray(jnp.argmax(last, -1), np.int32)[:, None]], axis=1)
    np.testing.assert_array_equal(got, seq[:, 5:])
    assert len(np.unique(got)) > 2  # not a degenerate repetition

"""Sharded decoder checkpoints (index + shards) load like one file, and the peak-memory probe reports."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from leanjax.weights.decoders import load_decoder
from leanjax.weights.files import CheckpointFileError
from leanjax.weights.load_peak import measure_load_peak, write_random_decoder

HF = dict(model_type="llama", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
          num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1e4, tie_word_embeddings=False)


def _leaves(path, **kw):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_decoder(path, **kw).model))]


def test_sharded_checkpoint_loads_like_one_file(tmp_path):
    one = write_random_decoder(tmp_path / "one", HF, shards=1)
    three = write_random_decoder(tmp_path / "three", HF, shards=3)
    assert one == three and len(list((tmp_path / "three").glob("*.safetensors"))) == 3
    index = json.loads((tmp_path / "three" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == three and len(set(index["weight_map"].values())) == 3
    for a, b in zip(_leaves(tmp_path / "one"), _leaves(tmp_path / "three")):
        np.testing.assert_array_equal(a, b)
    # bf16 as stored, when asked: the same values, half the bytes.
    for a, b in zip(_leaves(tmp_path / "three"), _leaves(tmp_path / "three", dtype="bfloat16")):
        assert b.dtype == jax.numpy.bfloat16
        np.testing.assert_array_equal(a, b.astype(np.float32))


def test_a_missing_shard_is_named(tmp_path):
    write_random_decoder(tmp_path, HF, shards=3)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointFileError, match="model-00002-of-00003.safetensors"):
        load_decoder(tmp_path)


@pytest.mark.slow  # a fresh interpreter per measurement: ~10 s
def test_load_peak_probe(tmp_path):
    total = write_random_decoder(tmp_path, HF, shards=2)
    out = measure_load_peak(tmp_path, dtype="bfloat16")
    assert out["checkpoint_bytes"] == total and out["peak_bytes"] > 0 and out["load_peak_ratio"] > 0

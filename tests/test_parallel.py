"""leanjax.parallel on 8 simulated CPU devices: mesh specs, sharding rules, sharded training equal to
single-device training, checkpoints across meshes, the shard_map loss, the planner, multi-host helpers.

Shapes are tiny and every compiled program is built once: the file stays a few seconds of CPU."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from leanjax import losses
from leanjax.models import MLP, CausalLM, TransformerConfig, functional
from leanjax.optim import make_optimizer
from leanjax.parallel import (
    Candidate,
    batch_sharding,
    cluster_kind,
    decide,
    factorizations,
    global_batch,
    initialize_kwargs,
    make_mesh,
    plan_mesh,
    process_batches,
    resolve_shape,
    shard,
    sharded_lm_loss,
    sharded_train_step,
    tree_shardings,
    vocab_parallel_cross_entropy,
)
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import Checkpointer
from leanjax.trees import path_str

VOCAB = 32


def _lm(scan=False):
    cfg = TransformerConfig(vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                            max_position_embeddings=4, type_vocab_size=0, dropout=0.0, causal=True,
                            scan_layers=scan)
    return functional(CausalLM(cfg, rngs=nnx.Rngs(0)))


def _tx(name="sgd", lr=0.5):
    return make_optimizer(name, learning_rate=lr, total_steps=10, warmup_steps=0, weight_decay=0.0)


def test_mesh_specs():
    assert resolve_shape("data=-1,tensor=2", 8) == {"data": 4, "tensor": 2}
    assert resolve_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    for bad in ("data=-1,tensor=-1", "data=3", "data", "data=x"):
        with pytest.raises(ValueError):
            resolve_shape(bad, 8)
    shapes = factorizations(8, ("data", "fsdp", "tensor"))
    assert len(shapes) == 10 and {"data": 2, "fsdp": 2, "tensor": 2} in shapes
    assert all(np.prod(list(s.values())) == 8 for s in shapes)
    mesh = make_mesh("data=2,fsdp=-1,tensor=2")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3


@pytest.mark.parametrize("scan", [False, True])
def test_rules_place_transformer_and_optimizer_state(scan):
    _, params = _lm(scan)
    state = TrainState.create(params, _tx("adamw", 1e-3), jax.random.key(0))
    sh = tree_shardings(state, make_mesh("data=2,fsdp=2,tensor=2"))
    lead = (None,) if scan else ()
    blk = sh.params["transformer"]["layers"] if scan else sh.params["transformer"]["layers"][0]
    assert blk["attention"]["query"]["kernel"].spec == P(*lead, "fsdp", "tensor")
    assert blk["attention"]["output"]["kernel"].spec == P(*lead, "tensor", "fsdp")
    assert blk["intermediate"]["kernel"].spec == P(*lead, "fsdp", "tensor")
    assert blk["output"]["kernel"].spec == P(*lead, "tensor", "fsdp")
    assert blk["attention_norm"]["scale"].spec == P(*lead, None)
    assert sh.params["transformer"]["embeddings"]["word"]["embedding"].spec == P("tensor", "fsdp")
    # The Adam moments sit exactly where their params do; scalars are replicated.
    param_specs = {path_str(k): x.spec for k, x in jax.tree_util.tree_flatten_with_path(sh.params)[0]}
    matched = 0
    for k, x in jax.tree_util.tree_flatten_with_path(sh.opt_state)[0]:
        name = path_str(k)
        owner = [p for p in param_specs if name.endswith("/" + p)]
        if owner:
            assert x.spec == param_specs[owner[0]], name
            matched += 1
    assert matched == 2 * len(param_specs)  # mu and nu
    assert sh.step.spec == P()
    # A mesh axis that does not divide a dimension is dropped rather than failing.
    odd = tree_shardings({"layers": [{"intermediate": {"kernel": jnp.zeros((6, 6))}}]}, make_mesh("fsdp=4,tensor=2"))
    assert odd["layers"][0]["intermediate"]["kernel"].spec == P(None, "tensor")


def test_mlp_rules_and_batch_sharding():
    _, params = functional(MLP(8, (16,), 4, rngs=nnx.Rngs(0)))
    mesh = make_mesh("data=4,tensor=2")
    assert tree_shardings(params, mesh)["layers"][0]["kernel"].spec == P(None, "tensor")
    assert batch_sharding(mesh, {"x": np.zeros((8, 3))})["x"].spec == P("data", None)


def test_sharded_training_equals_single_device():
    apply_fn, params = _lm()
    # SGD: the update is linear in the gradient, so float reassociation across devices stays at rounding
    # level (Adam divides by sqrt(v) and magnifies it on near-zero gradients).
    tx = _tx()
    state = TrainState.create(params, tx, jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.integers(0, VOCAB, (4, 4)).astype(np.int32),
                "targets": rng.integers(0, VOCAB, (4, 4)).astype(np.int32)} for _ in range(2)]

    single = make_train_step(losses.lm_loss(apply_fn), tx, donate=False)
    s1, ref_losses = state, []
    for b in batches:
        s1, m = single(s1, b)
        ref_losses.append(float(m["loss"]))

    # Every axis at once: batch over data x fsdp, params over fsdp and tensor, the vocab-parallel loss.
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    step, state_sh, batch_sh = sharded_train_step(
        functools.partial(make_train_step, sharded_lm_loss(apply_fn, mesh), tx), state, batches[0], mesh)
    s2, got_losses = shard(state, state_sh), []
    for b in batches:
        s2, m = step(s2, shard(b, batch_sh))
        got_losses.append(float(m["loss"]))
    np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)
    assert ref_losses[1] < ref_losses[0]  # the step did train
    chex.assert_trees_all_close(jax.device_get(s2.params), jax.device_get(s1.params), rtol=1e-5, atol=1e-6)
    q = s2.params["transformer"]["layers"][0]["attention"]["query"]["kernel"]
    assert q.sharding.spec == P("fsdp", "tensor")  # the state stayed sharded across steps


@pytest.mark.parametrize("vocab,mesh_spec", [(16, "data=2,tensor=4"), (15, "data=2,tensor=4")])
def test_vocab_parallel_cross_entropy_matches_reference(vocab, mesh_spec):
    mesh = make_mesh(mesh_spec)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    logits = jax.random.normal(k1, (4, 3, vocab)) * 3
    labels = jax.random.randint(k2, (4, 3), 0, vocab)
    mask = jax.random.bernoulli(k3, 0.6, (4, 3))

    def ref(lg):
        return losses.masked_mean(losses.cross_entropy(lg, labels), mask)

    def ours(lg):
        return vocab_parallel_cross_entropy(lg, labels, mask, mesh)

    compiled = jax.jit(jax.value_and_grad(ours)).lower(logits).compile()
    value, grad = compiled(logits)
    ref_value, ref_grad = jax.jit(jax.value_and_grad(ref))(logits)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-7)
    hlo = compiled.as_text()
    if vocab == 16:  # tensor=4 divides the vocabulary: the softmax is assembled with all-reduces
        assert "all-reduce" in hlo and "all-gather" not in hlo  # the logits are never gathered
    # 15 is not divisible by 4: the vocab axis is dropped and the same loss comes out


def test_checkpoint_saved_on_one_mesh_restores_on_another(tmp_path):
    _, params = functional(MLP(8, (16,), 4, rngs=nnx.Rngs(0)))
    tx = _tx("adamw", 1e-3)
    state = TrainState.create(params, tx, jax.random.key(0))
    state = state.replace(params=jax.tree.map(lambda x: x + 0.5, state.params))
    on_a = shard(state, tree_shardings(state, make_mesh("fsdp=8")))
    assert on_a.params["layers"][0]["kernel"].sharding.spec == P("fsdp", None)
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    ckpt.save(3, on_a, {"pos": 1})
    ckpt.wait()
    fresh = TrainState.create(params, tx, jax.random.key(9))
    restored, data_state, step = ckpt.restore(shard(fresh, tree_shardings(fresh, make_mesh("fsdp=2,tensor=4"))))
    ckpt.close()
    assert step == 3 and data_state == {"pos": 1}
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(state))
    got = restored.params["layers"][0]["kernel"].sharding
    assert isinstance(got, NamedSharding) and got.spec == P("fsdp", "tensor") and got.mesh.shape["tensor"] == 4


def test_planner_compiles_measures_and_caches(tmp_path, capsys):
    apply_fn, params = functional(MLP(8, (16,), 4, rngs=nnx.Rngs(0)))
    tx = _tx()
    state = TrainState.create(params, tx, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 8)).astype(np.float32), "label": rng.integers(0, 4, 8)}
    loss = losses.classification_loss(apply_fn, inputs="image")
    builds = []

    def build(mesh):
        builds.append(dict(mesh.shape))
        step, ssh, bsh = sharded_train_step(functools.partial(make_train_step, loss, tx), state, batch, mesh)
        return step, (shard(state, ssh), shard(batch, bsh))

    devices = jax.devices()[:2]
    cache = tmp_path / "plans.json"
    plan = plan_mesh(build, devices, axes=("data", "tensor"), measure_top=2, steps=1, rounds=1,
                     cache_path=cache, key="mlp")
    assert not plan.cached and {tuple(c.mesh.values()) for c in plan.candidates} == {(2, 1), (1, 2)}
    assert all(c.compiled and c.memory_per_device > 0 and c.estimated_step_s > 0 and c.collectives > 0
               for c in plan.candidates)
    measured = [c for c in plan.candidates if c.measured_step_s is not None]
    assert len(measured) == 2 and plan.mesh == measured[0].mesh  # the fastest measured wins
    assert measured[0].measured_step_s <= measured[1].measured_step_s
    out = capsys.readouterr().out
    assert "<- chosen" in out and " won" in out
    n_builds = len(builds)
    again = plan_mesh(build, devices, axes=("data", "tensor"), cache_path=cache, key="mlp")
    assert again.cached and again.mesh == plan.mesh and len(builds) == n_builds + 1  # one probe, no search


def test_planner_ranks_by_memory_fit_then_estimate():
    def cand(mesh, memory, estimate, compiled=True):
        c = Candidate(mesh, compiled=compiled, memory_per_device=memory, fits=memory <= 100,
                      estimated_step_s=estimate, error=None if compiled else "XlaRuntimeError: no")
        return c, None

    surveyed = [cand({"data": 4}, 150, 1.0), cand({"data": 2, "tensor": 2}, 90, 3.0),
                cand({"tensor": 4}, 60, 2.0), cand({"fsdp": 4}, 0, 0.0, compiled=False)]
    plan = decide(surveyed, memory_limit=100, measure_top=0)
    # data=4 is fastest by estimate but does not fit; tensor=4 is the fastest that does.
    assert plan.mesh == {"tensor": 4}
    assert [c.mesh for c in plan.candidates] == [{"tensor": 4}, {"data": 2, "tensor": 2}, {"data": 4}, {"fsdp": 4}]
    assert "1 candidate(s) did not" in plan.reason and "failed to compile" in plan.table()
    # Too little memory for every candidate, or nothing compiling, is a clear error, not a silent pick.
    with pytest.raises(RuntimeError, match="no mesh fits .* smallest needs"):
        decide(surveyed[:1], memory_limit=100, measure_top=0)
    with pytest.raises(RuntimeError, match="no mesh candidate compiled"):
        decide(surveyed[3:], measure_top=0)


def test_process_batches_split_the_global_batch():
    from leanjax.data import ArraySource

    source = ArraySource({"x": np.arange(40)})
    its = [process_batches(source, global_batch_size=8, seed=3, process_index=i, process_count=2) for i in range(2)]
    alone = process_batches(source, global_batch_size=8, seed=3, process_index=0, process_count=1)
    for _ in range(7):  # across an epoch boundary
        a, b = (next(it)["x"] for it in its)
        assert a.shape == b.shape == (4,) and not set(a) & set(b)
        # The same global batches whatever the number of processes: process 0's rows, then process 1's.
        np.testing.assert_array_equal(np.concatenate([a, b]), next(alone)["x"])
    with pytest.raises(ValueError, match="not divisible"):
        process_batches(source, global_batch_size=9, seed=0, process_index=0, process_count=2)
    # One process: its rows are the whole global batch, placed with the batch sharding.
    sh = batch_sharding(make_mesh("data=8"), {"x": np.zeros(8)})
    g = global_batch({"x": np.arange(8)}, sh)
    assert g["x"].sharding == sh["x"] and np.array_equal(np.asarray(g["x"]), np.arange(8))


def test_cluster_detection_from_environment():
    assert initialize_kwargs({}) is None
    assert cluster_kind({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None
    assert initialize_kwargs({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}) == {}
    assert cluster_kind({"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
    assert cluster_kind({"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "a"}) is None
    env = {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert initialize_kwargs(env) == {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        initialize_kwargs({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})

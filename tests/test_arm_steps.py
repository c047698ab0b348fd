"""StepsPerArm counts one compilation per batch shape per arm; train_with_curve evaluates on schedule,
leaves the caller's params intact and trains (the loss falls)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from leanjax.train import StepsPerArm, train_with_curve


def _loss(params, batch, rng):
    err = batch["x"] @ params["w"] - batch["y"]
    loss = jnp.mean(err ** 2)
    return loss, {"loss": loss}


def _batch(n):
    x = jnp.asarray(np.random.default_rng(n).normal(size=(n, 3)), jnp.float32)
    return {"x": x, "y": x @ jnp.array([1.0, -2.0, 0.5])}


def test_compiles_counted_per_arm_and_shape():
    tx = optax.sgd(0.1)
    steps = StepsPerArm(_loss, tx)
    params = {"w": jnp.zeros(3)}
    shapes = {"fixed": [8, 8, 8, 8], "growing": [4, 8, 8, 16]}
    for arm, sizes in shapes.items():
        train_with_curve(steps(arm), params, tx, 0, lambda s, sizes=sizes: _batch(sizes[s]), len(sizes),
                         lambda p: 0.0, 2)
    assert steps.compiles == {"fixed": 1, "growing": 3}
    assert steps("fixed") is steps("fixed")


def test_curve_on_schedule_params_kept_and_loss_falls():
    tx = optax.sgd(0.1)
    params = {"w": jnp.zeros(3)}
    batch = _batch(32)
    eval_fn = lambda p: float(_loss(p, batch, None)[0])  # noqa: E731
    state, curve, wall = train_with_curve(StepsPerArm(_loss, tx)("a"), params, tx, 0, lambda s: batch, 7,
                                          eval_fn, 3)
    assert [s for s, _ in curve] == [3, 6, 7]
    assert curve[-1][1] < curve[0][1] < eval_fn(params)
    np.testing.assert_array_equal(np.asarray(params["w"]), np.zeros(3))  # donated copies, not the caller's
    assert wall > 0 and int(state.step) == 7
    assert jax.tree.structure(state.params) == jax.tree.structure(params)

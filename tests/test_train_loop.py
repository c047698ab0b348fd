"""The canonical loop: resume equality, preemption, NaN guard, incompatible checkpoints, logs."""

import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leanjax import losses
from leanjax.optim import make_optimizer
from leanjax.state import TrainState
from leanjax.step import make_train_step
from leanjax.train import IncompatibleCheckpointError, NonFiniteLossError, fit, plot_curves, read_jsonl
from leanjax.train.checkpoint import Checkpointer


def _apply(params, x, dropout_rng=None):
    h = jnp.tanh(x @ params["w1"])
    if dropout_rng is not None:  # exercises the RNG carried in the state
        h = h * jax.random.bernoulli(dropout_rng, 0.9, h.shape) / 0.9
    return h @ params["w2"]


class ToyIter:
    """A resumable iterator: batch i is a pure function of (seed, i)."""

    def __init__(self, seed=0, nan_at=None, sigterm_at=None):
        self.i, self.seed, self.nan_at, self.sigterm_at = 0, seed, nan_at, sigterm_at

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.i])
        x = rng.normal(size=(16, 5)).astype(np.float32)
        if self.nan_at is not None and self.i == self.nan_at:
            x[0, 0] = np.nan
        if self.sigterm_at is not None and self.i == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.i += 1
        return {"image": x, "label": (x.sum(1) > 0).astype(np.int32)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def _setup(hidden=8, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w1": jax.random.normal(k1, (5, hidden)) * 0.5, "w2": jax.random.normal(k2, (hidden, 2)) * 0.5}
    tx = make_optimizer("adamw", learning_rate=1e-2, total_steps=40, warmup_steps=4)
    state = TrainState.create(params, tx, jax.random.key(seed + 1))
    return state, make_train_step(losses.classification_loss(_apply), tx)


def _fit(workdir, num_steps, it=None, **kw):
    state, step = _setup()
    kw.setdefault("checkpoint_every", 5)
    return fit(state, step, it or ToyIter(), num_steps=num_steps, workdir=str(workdir), log_every=5,
               progress=False, **kw)


def _eval_fn(params):
    batch = next(ToyIter(seed=99))
    return {k: float(v.mean()) for k, v in losses.classification_metrics(_apply)(params, batch).items()}


def test_resume_continues_bitwise_equal(tmp_path):
    straight = _fit(tmp_path / "a", 20, eval_fn=_eval_fn, eval_every=10)
    first = _fit(tmp_path / "b", 10, eval_fn=_eval_fn, eval_every=10)
    assert first.start_step == 0
    resumed = _fit(tmp_path / "b", 20, eval_fn=_eval_fn, eval_every=10)
    assert resumed.start_step == 10
    chex.assert_trees_all_equal(straight.state.params, resumed.state.params)
    chex.assert_trees_all_equal(straight.state.opt_state, resumed.state.opt_state)
    rows_a, rows_b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert rows_b == rows_a and len(rows_a) == 6  # train rows at 5..20, eval rows at 10 and 20
    assert os.path.exists(tmp_path / "a" / "tb")


def test_sigterm_saves_and_resume_matches(tmp_path):
    straight = _fit(tmp_path / "a", 20)
    pre = _fit(tmp_path / "b", 20, it=ToyIter(sigterm_at=7))
    assert pre.preempted and Checkpointer(tmp_path / "b" / "checkpoints").latest_step() == 8
    done = _fit(tmp_path / "b", 20)
    assert done.start_step == 8 and not done.preempted
    chex.assert_trees_all_equal(straight.state.params, done.state.params)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 13") as info:
        _fit(tmp_path, 20, it=ToyIter(nan_at=12))
    assert info.value.last_checkpoint == 10
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 10
    state, _ = _setup()
    restored, data_state, step = ckpt.restore(state)
    assert step == 10 and data_state == {"i": 10}
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))


def test_incompatible_checkpoint_names_keys_and_shapes(tmp_path):
    _fit(tmp_path, 5)
    state, step = _setup(hidden=4)
    with pytest.raises(IncompatibleCheckpointError) as info:
        fit(state, step, ToyIter(), num_steps=10, workdir=str(tmp_path), progress=False)
    msg = str(info.value)
    assert "params/w1: checkpoint (5, 8) float32, model (5, 4) float32" in msg
    assert "fresh --workdir" in msg


def test_plot_written(tmp_path):
    _fit(tmp_path, 10, eval_fn=_eval_fn, eval_every=5)
    path = plot_curves(str(tmp_path))
    assert path and os.path.getsize(path) > 1000


def test_stop_file_ends_the_run_at_the_next_log_point(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "STOP").write_text("")
    result = _fit(tmp_path, 20, checkpoint_every=0)
    assert int(result.state.step) == 5 and not result.preempted
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 5


def test_steps_to_target_and_compare_to_baseline(tmp_path):
    from leanjax.train import compare_to_baseline, plot_arm_curves, steps_to_target

    assert steps_to_target([(10, 0.5), (20, 0.7), (30, 0.9)], 0.7) == 20
    assert steps_to_target([(10, 2.0), (20, 1.5)], 1.0, higher_is_better=False) is None
    curves = {"random": [[(10, 0.5), (20, 0.8)], [(10, 0.6), (20, 0.7)]],
              "curriculum": [[(10, 0.75), (20, 0.9)], [(10, 0.5), (20, 0.6)]]}
    out = compare_to_baseline(curves)
    assert out["target"] == 0.7  # the worst final accuracy of the random seeds
    assert out["random"]["steps_to_target_per_seed"] == [20, 20]
    assert out["curriculum"]["steps_to_target_per_seed"] == [10, None]
    assert out["curriculum"]["steps_to_target"] is None  # not every seed reached it
    assert out["curriculum"]["speedup_per_seed"] == [2.0, 0.0] and out["curriculum"]["speedup_low"] == 0.0
    assert out["curriculum"]["final_metric"] == pytest.approx(0.75)
    assert compare_to_baseline(curves, target=0.5)["curriculum"]["steps_to_target"] == 10
    with pytest.raises(ValueError, match="no 'random' arm"):
        compare_to_baseline({"a": curves["random"]})
    path = plot_arm_curves({"mnist": curves}, str(tmp_path / "c.png"), targets={"mnist": out["target"]})
    assert (tmp_path / "c.png").stat().st_size > 1000 and path.endswith("c.png")


def test_plot_bars_draws_one_bar_per_series_and_category(tmp_path):
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanjax.train import plot_bars

    drawn = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, path, **kw):  # what was drawn, read before the figure is closed
        drawn["heights"] = [p.get_height() for p in fig.axes[0].patches]
        drawn["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return real_savefig(fig, path, **kw)

    plt.Figure.savefig = spy
    try:
        path = plot_bars({"cnn": {"dense": 0.9, "s75": 0.8}, "minilm": {"dense": 0.6, "movement": 0.5}},
                         str(tmp_path / "b.png"), ylabel="accuracy", ylim=(0, 1))
    finally:
        plt.Figure.savefig = real_savefig
    assert drawn["ticks"] == ["dense", "s75", "movement"]  # categories in first-seen order
    heights = [None if math.isnan(h) else h for h in drawn["heights"]]  # a missing value: a NaN bar, not drawn
    assert heights == [0.9, 0.8, None, 0.6, None, 0.5]
    assert (tmp_path / "b.png").stat().st_size > 1000 and path.endswith("b.png")


def test_write_report_markdown_and_self_contained_html(tmp_path):
    import base64

    from leanjax.train.report import write_report

    png = b"\x89PNG fake bytes"
    paths = write_report(str(tmp_path), title="a <b> report", paragraphs=["x < y"],
                         tables=[("Costs", [["stage", "what"], ["lean", "`remat` & QLoRA"]])],
                         figures={"memory": ("Training memory", png)})
    md = open(paths["md"]).read()
    assert md.startswith("# a <b> report\n\nx < y\n") and "| lean | `remat` & QLoRA |" in md
    assert "![Training memory](report_figures/memory.png)" in md
    assert open(os.path.join(paths["figures"], "memory.png"), "rb").read() == png
    page = open(paths["html"]).read()
    assert "<title>a &lt;b&gt; report</title>" in page and "<p>x &lt; y</p>" in page
    assert "<td><code>remat</code> &amp; QLoRA</td>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page

"""Curriculum: pacing endpoints, a sampler that respects competence and resumes, length buckets,
and the `curriculum` experiment's :tiny config end to end."""

import json

import numpy as np
import pytest

from leanjax.data import ArraySource
from leanjax.data.curriculum import (
    PACINGS,
    CurriculumSampler,
    competence,
    difficulty_order,
    length_schedule,
    random_order,
    split_windows,
)


@pytest.mark.parametrize("kind", [k for k in PACINGS if k != "none"])
def test_pacing_hits_endpoints_and_never_decreases(kind):
    values = [competence(t, 100, kind=kind, c0=0.05) for t in range(-5, 130)]
    assert competence(0, 100, kind=kind, c0=0.05) == pytest.approx(0.05)
    assert competence(100, 100, kind=kind, c0=0.05) == 1.0 and values[-1] == 1.0
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert 0.05 < competence(50, 100, kind=kind, c0=0.05) < 1.0


def test_pacing_shapes_and_errors():
    # root grows fastest early, exponential slowest: the reason to pick one over another
    mid = {k: competence(25, 100, kind=k, c0=0.1) for k in ("root", "linear", "exponential")}
    assert mid["root"] > mid["linear"] > mid["exponential"]
    assert competence(0, 10, kind="none") == 1.0
    with pytest.raises(ValueError, match="unknown pacing"):
        competence(0, 10, kind="cosine")
    with pytest.raises(ValueError, match="c0"):
        competence(0, 10, c0=0.0)


def test_orders():
    d = np.array([0.3, 0.1, 0.9, 0.5])
    np.testing.assert_array_equal(difficulty_order(d), [1, 0, 3, 2])
    np.testing.assert_array_equal(difficulty_order(d, anti=True), [2, 3, 0, 1])
    assert sorted(random_order(10, 0)) == list(range(10))
    with pytest.raises(ValueError, match="finite"):
        difficulty_order(np.array([0.0, np.nan]))


def _sampler(**kw):
    source = ArraySource({"x": np.arange(100, dtype=np.float32)})
    order = difficulty_order(-np.arange(100.0))  # example 99 is the easiest
    args = dict(batch_size=4, total_steps=50, seed=3, pacing="linear", c0=0.1) | kw
    return CurriculumSampler(source, order, **args)


def test_sampler_draws_only_what_competence_allows_and_reaches_everything():
    sampler = _sampler()
    first = [next(sampler) for _ in range(5)]
    assert sampler.available(0) == 10 and sampler.available(4) == 18  # ceil((0.1 + 0.9 t/50) * 100)
    assert all(b["index"].min() >= 100 - sampler.available(t) for t, b in enumerate(first))
    np.testing.assert_array_equal(first[0]["x"], first[0]["index"])
    late = np.concatenate([sampler.indices(s) for s in range(50, 150)])
    assert late.min() < 20  # at full competence the hardest examples appear


def test_sampler_resumes_with_the_same_batches():
    a = _sampler()
    straight = [next(a)["index"] for _ in range(12)]
    b = _sampler()
    for _ in range(5):
        next(b)
    c = _sampler()
    c.set_state(b.get_state())
    np.testing.assert_array_equal(np.stack([next(c)["index"] for _ in range(7)]), np.stack(straight[5:]))
    with pytest.raises(ValueError, match="permutation"):
        CurriculumSampler(ArraySource({"x": np.zeros(3)}), np.array([0, 0, 1]), batch_size=1, total_steps=5,
                          seed=0)


def test_length_schedule_uses_only_the_buckets():
    lengths = [length_schedule(t, 90, (32, 64, 128)) for t in range(120)]
    assert set(lengths) == {32, 64, 128}
    assert lengths[0] == 32 and lengths[-1] == 128 and lengths == sorted(lengths)


def test_split_windows_keeps_every_token():
    batch = {"inputs": np.arange(2 * 8).reshape(2, 8), "targets": np.arange(2 * 8).reshape(2, 8) + 1}
    short = split_windows(batch, 4)
    assert short["inputs"].shape == (4, 4)
    np.testing.assert_array_equal(short["inputs"].reshape(-1), batch["inputs"].reshape(-1))
    with pytest.raises(ValueError, match="multiple"):
        split_windows(batch, 3)


@pytest.mark.slow  # two tasks x two arms x two seeds, ~8 compilations
def test_curriculum_tiny_end_to_end(tmp_path):
    from leanjax.experiments import _launch, curriculum

    code = _launch.main("curriculum", curriculum.run,
                        ["--config", "configs/curriculum/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == {"curriculum.steps_to_target", "random.steps_to_target", "speedup",
                                        "speedup_low", "curriculum.final_metric", "random.final_metric"}
    lm = summary["metrics"]["lm"]
    assert lm["length_warmup"]["compiles"] == 3 and lm["random"]["compiles"] == 1  # one per bucket
    assert (tmp_path / "curves.png").exists()

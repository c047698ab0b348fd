"""Data sampling: pruned subsets, InfoBatch's unbiased rescaling, semantic dedup, and the
`data_sampling` experiment's :tiny config end to end."""

import json

import numpy as np
import pytest

from leanjax.data.sampling import (
    holdout_split,
    infobatch_plan,
    plan_batches,
    random_subset,
    select_by_score,
    semantic_dedup,
)


def test_select_by_score_modes_and_class_balance():
    scores = np.arange(10.0)
    np.testing.assert_array_equal(select_by_score(scores, 0.3, "hardest"), [7, 8, 9])
    np.testing.assert_array_equal(select_by_score(scores, 0.3, "easiest"), [0, 1, 2])
    np.testing.assert_array_equal(select_by_score(scores, 0.2, "middle"), [4, 5])
    labels = np.array([0] * 8 + [1] * 2)  # class 1 holds the two hardest examples
    kept = select_by_score(scores, 0.5, "hardest", labels=labels)
    np.testing.assert_array_equal(kept, [4, 5, 6, 7, 9])  # half of each class, not the top 5 overall
    with pytest.raises(ValueError, match="fraction"):
        select_by_score(scores, 0.0)


def test_random_subset_is_class_balanced_and_seeded():
    labels = np.repeat(np.arange(4), 25)
    a = random_subset(100, 0.4, seed=1, labels=labels)
    assert len(a) == 40 and np.all(np.bincount(labels[a]) == 10)
    np.testing.assert_array_equal(a, random_subset(100, 0.4, seed=1, labels=labels))
    assert len(np.unique(random_subset(100, 0.4, seed=1))) == 40


def test_holdout_split_is_disjoint_complete_and_seeded():
    from leanjax.data import ArraySource

    source = ArraySource({"x": np.arange(20).reshape(10, 2), "label": np.arange(10)})
    rest, held = holdout_split(source, 3, seed=1)
    assert len(rest) == 7 and len(held) == 3
    ids = [held[i]["label"] for i in range(3)] + [rest[i]["label"] for i in range(7)]
    assert sorted(int(i) for i in ids) == list(range(10))
    np.testing.assert_array_equal(held[0]["x"], source[int(held[0]["label"])]["x"])
    again = holdout_split(source, 3, seed=1)[1]
    assert [int(again[i]["label"]) for i in range(3)] == [int(held[i]["label"]) for i in range(3)]
    assert {int(holdout_split(source, 3, seed=s)[1][0]["label"]) for s in range(8)} != {int(held[0]["label"])}
    with pytest.raises(ValueError, match="holdout size 10"):
        holdout_split(source, 10, seed=0)


def test_infobatch_rescaling_keeps_the_expected_gradient():
    # toy least squares: per-example gradient g_i = (w.x_i - y_i) x_i
    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(40, 3)), rng.normal(size=40), rng.normal(size=3)
    residual = x @ w - y
    grads = residual[:, None] * x
    scores = residual ** 2  # the loss: half the examples are "well learned"
    full = grads.sum(0)
    draws, mean, kept = 4000, np.zeros(3), 0
    for _ in range(draws):
        ids, weights = infobatch_plan(scores, 0.5, rng)
        mean += (weights[:, None] * grads[ids]).sum(0) / draws
        kept += len(ids) / draws
    assert kept < 0.85 * len(scores)  # it really skips examples...
    np.testing.assert_allclose(mean, full, atol=0.04 * np.abs(grads).sum())  # ...without bias
    ids, weights = infobatch_plan(scores, 0.5, rng)
    naive = grads[ids].sum(0) / len(ids) * len(scores)  # unweighted: biased towards the hard examples
    assert set(np.unique(weights)) <= {1.0, 2.0}
    assert np.abs(mean - full).sum() < np.abs(naive - full).sum()


def test_infobatch_never_prunes_unseen_examples():
    scores = np.zeros(10)
    seen = np.array([True] * 5 + [False] * 5)
    scores[:5] = [0.0, 0.0, 0.0, 1.0, 1.0]
    for seed in range(20):
        ids, weights = infobatch_plan(scores, 0.9, np.random.default_rng(seed), seen=seen)
        assert set(range(3, 10)) <= set(ids.tolist())
        assert np.all(weights[np.isin(ids, np.arange(5, 10))] == 1.0)


def test_plan_batches_pads_with_zero_weight():
    out = plan_batches(np.arange(10), np.ones(10, np.float32), 4)
    assert [len(i) for i, _ in out] == [4, 4, 4]
    np.testing.assert_array_equal(out[-1][1], [1, 1, 0, 0])


def test_semantic_dedup_removes_planted_near_duplicates():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    dupes = base[:10] + 0.01 * rng.normal(size=(10, 16))
    emb = np.concatenate([base, dupes])
    for clusters in (1, 3):
        kept = semantic_dedup(emb, 0.95, num_clusters=clusters)
        assert len(kept) == 30
        pairs = [(i, i + 30) for i in range(10)]
        assert all((a in kept) != (b in kept) for a, b in pairs)  # exactly one of each pair survives
    assert len(semantic_dedup(emb, 1.0)) == 40
    with pytest.raises(ValueError, match="embeddings"):
        semantic_dedup(np.zeros(3), 0.9)


@pytest.mark.slow  # five short MLP runs, MiniLM load and the tweets build
def test_data_sampling_tiny_end_to_end(tmp_path):
    from leanjax.experiments import _launch, data_sampling

    code = _launch.main("data_sampling", data_sampling.run,
                        ["--config", "configs/data_sampling/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    h = json.loads((tmp_path / "summary.json").read_text())["headline"]
    assert set(h) == {"fraction_kept", "subset.accuracy", "full.accuracy", "random_subset.accuracy",
                      "dynamic.compute_saved", "dynamic.accuracy", "dedup.removed_fraction"}
    assert h["fraction_kept"] == pytest.approx(0.5, abs=0.01)
    assert 0.0 < h["dynamic.compute_saved"] < 1.0 and 0.0 <= h["dedup.removed_fraction"] < 1.0

"""Warm-start embeddings: vector/subword/mean-cov starts, projection, counts, and row-level freezing."""

import numpy as np
import optax
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from leanjax.optim import make_optimizer
from leanjax.weights.embeddings import glove_vectors, init_embeddings, project, train_rows

WORDS = ["the", "cat", "sat", "mat", "dog"]
VECTORS = np.arange(5 * 4, dtype=np.float32).reshape(5, 4) / 10


def test_vectors_exact_then_lowercase_and_counts():
    init = init_embeddings(["cat", "Dog", "zebra", "the"], method="vectors", words=WORDS, vectors=VECTORS, rng=0)
    np.testing.assert_array_equal(init.matched, [True, True, False, True])
    np.testing.assert_allclose(init.table[[0, 1, 3]], VECTORS[[1, 4, 0]])
    assert init.counts == {"exact": 2, "lowercase": 1, "fallback": 1}
    assert init.unmatched_tokens == ("zebra",)
    assert init.matched_fraction == 0.75
    assert init.report()["unmatched"] == 1
    strict = init_embeddings(["Dog"], method="vectors", words=WORDS, vectors=VECTORS, rng=0, lowercase=False,
                             fallback="zeros")
    assert not strict.matched[0] and not strict.table.any()


def test_projection_keeps_geometry():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8))
    wide = project(table, 12, rng)
    assert wide.shape == (50, 12)
    np.testing.assert_allclose(wide @ wide.T, table @ table.T, atol=1e-8)  # an isometry
    low_rank = rng.standard_normal((50, 3)) @ rng.standard_normal((3, 8))
    narrow = project(low_rank, 3, rng)
    np.testing.assert_allclose(narrow @ narrow.T, low_rank @ low_rank.T, atol=1e-6)  # rank 3: nothing lost
    init = init_embeddings(WORDS, method="vectors", words=WORDS, vectors=VECTORS, rng=0, dim=2, scale=0.02)
    assert init.table.shape == (5, 2)
    np.testing.assert_allclose(np.sqrt(np.mean(init.table.astype(np.float64) ** 2)), 0.02, rtol=1e-5)


def test_mean_cov_samples_match_the_statistics():
    rng = np.random.default_rng(1)
    pretrained = rng.standard_normal((2000, 3)) @ np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0.5]]) + [1, -2, 3]
    vocab = ["w0"] + [f"new{i}" for i in range(20000)]
    init = init_embeddings(vocab, method="mean_cov", words=[f"w{i}" for i in range(2000)], vectors=pretrained,
                           rng=0)
    assert init.counts == {"exact": 1, "sampled": 20000}
    np.testing.assert_allclose(init.table[0], pretrained[0], rtol=1e-6)
    new = init.table[1:].astype(np.float64)
    np.testing.assert_allclose(new.mean(0), pretrained.mean(0), atol=0.06)
    np.testing.assert_allclose(np.cov(new, rowvar=False), np.cov(pretrained, rowvar=False), atol=0.15)


def _wordpiece():
    vocab = {"[UNK]": 0, "play": 1, "##ing": 2, "##ed": 3, "run": 4}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def test_subword_is_the_mean_of_the_pieces():
    table = np.eye(5, dtype=np.float32)
    init = init_embeddings(["playing", "run", "xyz"], method="subword", tokenizer=_wordpiece(), vectors=table,
                           rng=0, fallback="zeros")
    np.testing.assert_allclose(init.table[0], (table[1] + table[2]) / 2)
    np.testing.assert_allclose(init.table[1], table[4])
    np.testing.assert_array_equal(init.matched, [True, True, False])
    assert init.counts == {"subword": 1, "single_piece": 1, "fallback": 1}


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="method='nope'"):
        init_embeddings(WORDS, method="nope", vectors=VECTORS, rng=0)
    with pytest.raises(ValueError, match="needs `words`"):
        init_embeddings(WORDS, method="vectors", vectors=VECTORS, rng=0)
    with pytest.raises(ValueError, match="`words` has 2 entries but `vectors` has 5 rows"):
        init_embeddings(WORDS, method="vectors", words=WORDS[:2], vectors=VECTORS, rng=0)
    with pytest.raises(ValueError, match="needs `tokenizer`"):
        init_embeddings(WORDS, method="subword", vectors=VECTORS, rng=0)


def test_train_rows_freezes_exactly_the_chosen_rows():
    params = {"embed": {"embedding": np.ones((6, 3), np.float32)}, "dense": {"kernel": np.ones((3, 2), np.float32)}}
    rows = np.array([True, False, True, False, False, True])
    tx = train_rows(make_optimizer("adamw", learning_rate=0.1, total_steps=10, weight_decay=0.1),
                    {"embed/embedding": rows})
    state = tx.init(params)
    grads = {"embed": {"embedding": np.full((6, 3), 0.5, np.float32)}, "dense": {"kernel": np.ones((3, 2), np.float32)}}
    new = params
    for _ in range(3):
        updates, state = tx.update(grads, state, new)
        new = optax.apply_updates(new, updates)
    table = np.asarray(new["embed"]["embedding"])
    np.testing.assert_array_equal(table[~rows], 1.0)  # bitwise unchanged, weight decay included
    assert (table[rows] < 1.0).all() and (np.asarray(new["dense"]["kernel"]) < 1.0).all()
    with pytest.raises(KeyError, match="no leaf named \\['embed/wrong'\\]"):
        train_rows(optax.sgd(0.1), {"embed/wrong": rows}).init(params)
    with pytest.raises(ValueError, match="has 2 rows, the leaf has shape \\(6, 3\\)"):
        train_rows(optax.sgd(0.1), {"embed/embedding": rows[:2]}).init(params)


def test_glove_ships_offline():
    words, vectors = glove_vectors()
    assert len(words) == vectors.shape[0] == 400_000 and vectors.shape[1] == 50
    init = init_embeddings(["The", "good", "qzxqzxqzx"], method="vectors", words=words, vectors=vectors, rng=0)
    assert init.counts == {"lowercase": 1, "exact": 1, "fallback": 1}
    np.testing.assert_allclose(init.table[1], vectors[words.index("good")])

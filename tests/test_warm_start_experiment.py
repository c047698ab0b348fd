"""The warm_start experiment: word vocabulary and encoding, and `:tiny` end to end, in process."""

import json

import numpy as np

from leanjax.experiments import _launch, warm_start

HEADLINE = {"warm.steps_to_target", "random.steps_to_target", "speedup", "warm.final_accuracy",
            "random.final_accuracy", "matched_fraction"}
HEADLINE |= {f"few_labels.{k}" for k in HEADLINE}


def test_vocab_and_encoding():
    texts = ["Great flight, @united!", "great GREAT service", "the flight was late"]
    assert warm_start.words(texts[0]) == ["great", "flight", ",", "@", "united", "!"]
    vocab = warm_start.build_vocab(texts, size=3)
    assert vocab == ["[PAD]", "[UNK]", "great", "flight"]  # min_count=2 drops the singletons
    ids, mask = warm_start.encode(["great late flight great"], vocab, seq_len=6)
    np.testing.assert_array_equal(ids, [[2, 1, 3, 2, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0]])


# In `make test`: the `:tiny` contract (every headline key) at ~30-35 s on 2 quiet cores (-O0).
def test_tiny_writes_every_headline_key(tmp_path):
    code = _launch.main("warm_start", warm_start.run,
                        ["--config", "configs/warm_start/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == HEADLINE
    assert 0.5 < summary["headline"]["matched_fraction"] <= 1.0
    metrics = summary["metrics"]
    assert len(metrics["final_accuracy"]["warm_frozen"]) == 1  # one per seed
    assert metrics["embedding_init"]["unmatched"] >= 2  # [PAD] and [UNK] are never in GloVe
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    # The few-label arm: its own 200 tweets, centred GloVe rows at RMS 0.02, random and warm only.
    few = metrics["few_labels"]
    assert set(few["final_accuracy"]) == {"random", "warm"}
    assert few["embedding_init"]["unmatched"] >= 2 and few["overrides"]["train_examples"] == 200
    assert (tmp_path / "few_labels" / "learning_curves.png").is_file()


def test_centred_scaled_embeddings_have_zero_mean_rows_and_the_asked_rms():
    from leanjax.weights.embeddings import init_embeddings

    rng = np.random.default_rng(0)
    vectors = rng.normal(3.0, 1.0, (20, 8)).astype(np.float32)  # a large common offset, as GloVe has
    words = [f"w{i}" for i in range(20)]
    init = init_embeddings(["w1", "w2", "new"], method="vectors", words=words, vectors=vectors, rng=0,
                           scale=0.02, centre=True)
    np.testing.assert_allclose(init.table.mean(0), 0.0, atol=1e-6)
    assert abs(np.sqrt(np.mean(init.table ** 2)) - 0.02) < 1e-6
    # Centring keeps the differences between rows (up to the common rescale).
    plain = init_embeddings(["w1", "w2", "new"], method="vectors", words=words, vectors=vectors, rng=0)
    diff, plain_diff = init.table[0] - init.table[1], plain.table[0] - plain.table[1]
    np.testing.assert_allclose(diff / np.linalg.norm(diff), plain_diff / np.linalg.norm(plain_diff), atol=1e-5)

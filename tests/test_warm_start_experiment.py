"""The warm_start experiment: word vocabulary and encoding, and `:tiny` end to end, in process."""

import json

import numpy as np

from leanjax.experiments import _launch, warm_start

HEADLINE = {"warm.steps_to_target", "random.steps_to_target", "speedup", "warm.final_accuracy",
            "random.final_accuracy", "matched_fraction"}


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

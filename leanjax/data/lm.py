"""Language-model windows: a split's text as one token stream, cut into non-overlapping windows.

Window `i` covers tokens `[i*T, (i+1)*T]`: `inputs` are the first T, `targets` the same shifted by
one, so every token is predicted exactly once per epoch. Passages are joined by blank lines, which
rebuilds the plays' text.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import pathlib
from typing import Literal

import numpy as np
import tokenizers as hf_tokenizers

from leanjax.data.source import resolve_data_dir, split_texts
from leanjax.data.tokenizers import CharVocab, shakespeare_bpe, shakespeare_chars

PASSAGE_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True, eq=False)
class LMWindows:
    """Random-access source of `{"inputs": int32 [seq_len], "targets": int32 [seq_len]}`."""

    tokens: np.ndarray  # int32 [N], the whole split
    seq_len: int
    vocab_size: int
    tokenizer: CharVocab | hf_tokenizers.Tokenizer  # to decode samples

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = (index % len(self)) * self.seq_len
        window = self.tokens[start : start + self.seq_len + 1]
        return {"inputs": window[:-1], "targets": window[1:]}


def lm_source(
    name: str = "shakespeare",
    split: str = "train",
    *,
    seq_len: int,
    tokenizer: Literal["char", "bpe"] = "char",
    bpe_vocab_size: int = 4096,
    data_dir: str | os.PathLike | None = None,
) -> LMWindows:
    """LM windows over `split` of `name` (only `shakespeare` has a text corpus and tokenizers).

    The vocabulary (characters or BPE) always comes from the train split: ids agree across splits.
    """
    if name != "shakespeare":
        raise ValueError(f"lm_source supports name='shakespeare' only, got {name!r}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    tokens, vocab = _token_stream(split, tokenizer, bpe_vocab_size, resolve_data_dir(data_dir))
    vocab_size = vocab.vocab_size if isinstance(vocab, CharVocab) else vocab.get_vocab_size()
    if len(tokens) <= seq_len:
        raise ValueError(f"{name}/{split} has {len(tokens)} tokens: too few for seq_len={seq_len}")
    return LMWindows(tokens, seq_len, vocab_size, vocab)


@functools.lru_cache(maxsize=4)
def _token_stream(split: str, tokenizer: str, bpe_vocab_size: int, root: pathlib.Path):
    # Cached: tokenizing the corpus takes ~1 s, and train/eval sources of several lengths share it.
    texts = [text + PASSAGE_SEPARATOR for text in split_texts("shakespeare", split, root)]
    if tokenizer == "char":
        vocab = shakespeare_chars(root)
        tokens = vocab.encode("".join(texts))
    elif tokenizer == "bpe":
        vocab = shakespeare_bpe(bpe_vocab_size, root)
        tokens = np.concatenate([np.array(e.ids, np.int32) for e in vocab.encode_batch(texts)])
    else:
        raise ValueError(f"tokenizer must be 'char' or 'bpe', got {tokenizer!r}")
    tokens.setflags(write=False)  # shared by every window source built from this cache entry
    return tokens, vocab

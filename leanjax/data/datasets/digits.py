"""`digits`: scikit-learn's 1,797 8x8 handwritten digits, split 1,438 train / 359 test (stratified).

Features: `image` uint8 [8, 8, 1] rescaled from sklearn's 0-16 to 0-255 (so one normalisation,
`x / 255`, serves this set and `mnist5k`), `label` int64 in 0-9.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from leanjax.data.datasets._base import EmbeddedBuilder
from leanjax.data.datasets._split import stratified_split


class Digits(EmbeddedBuilder, skip_registration=True):
    """sklearn digits: 20% of each class (rounded) in test, fixed."""

    name = "digits"
    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: splits no longer grouped by class

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits  # sklearn is slow to import; only builds need it

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
        splits = stratified_split(digits.target, {"test": 0.2}, seed=0)
        return {
            name: self._generate_examples(images, digits.target, indices)
            for name, indices in splits.items()
        }

    def _generate_examples(self, images, labels, indices):
        # TFDS stores examples in key order (disable_shuffling): key by position in the split's order.
        for key, i in enumerate(indices):
            yield key, {"image": images[i], "label": int(labels[i])}

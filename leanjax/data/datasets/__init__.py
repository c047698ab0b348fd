"""Embedded data sets, one TFDS builder per module, keyed by their `load` name."""

from leanjax.data.datasets.digits import Digits
from leanjax.data.datasets.mnist5k import Mnist5k
from leanjax.data.datasets.shakespeare import Shakespeare
from leanjax.data.datasets.tweets import Tweets

BUILDERS = {builder.name: builder for builder in (Mnist5k, Digits, Shakespeare, Tweets)}

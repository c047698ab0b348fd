"""Where data lives and how a named split becomes a random-access source.

A `Source` is anything with `len(source)` and `source[i]` -> dict of numpy arrays / scalars /
bytes. `load` returns a TFDS array_record data source: embedded sets are built on first use into
the data directory; `tfds:<name>` reads a dataset that TFDS has prepared there (downloading it
only when asked to). `ArraySource` serves arrays already in memory (e.g. tokenized text).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import io
import logging
import operator
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

TFDS_PREFIX = "tfds:"


class Source(Protocol):
    """What pipelines read: `len(source)` examples; `source[i]` -> dict of arrays/scalars/bytes."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class DatasetNotFoundError(ValueError):
    """A dataset name that is neither embedded nor available through TFDS here."""


def data_dir() -> pathlib.Path:
    """`$LEANJAX_DATA_DIR`, or `~/.cache/leanjax/data`: built datasets and cached tokenizers."""
    env = os.environ.get("LEANJAX_DATA_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache/leanjax/data"


def resolve_data_dir(directory: str | os.PathLike | None) -> pathlib.Path:
    """`directory` if given, else `data_dir()`."""
    return pathlib.Path(directory).expanduser() if directory is not None else data_dir()


def load(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> Source:
    """Random-access source of `split` of dataset `name` (TFDS split syntax, e.g. "train[:10%]").

    `name` is an embedded set (`mnist5k`, `digits`, `shakespeare`, `tweets`), built into `data_dir`
    on first use, or `tfds:<name>` for any TFDS dataset prepared (in array_record format) under
    `data_dir`; `download=True` lets TFDS download and prepare it first (needs network access).
    """
    root = resolve_data_dir(data_dir)
    if name.startswith(TFDS_PREFIX):
        builder = _tfds_builder(name[len(TFDS_PREFIX) :], root, download)
    else:
        builder = _embedded_builder(name, root)
    _check_split(name, split, list(builder.info.splits))
    return builder.as_data_source(split=split)


def _embedded_builder(name: str, root: pathlib.Path):
    from leanjax.data.datasets import BUILDERS

    if name not in BUILDERS:
        raise DatasetNotFoundError(
            f"Unknown dataset {name!r}: expected one of {sorted(BUILDERS)} or 'tfds:<name>'"
        )
    # TFDS narrates every build (banner, progress bars, absl warnings) on stdout and stderr;
    # one line says the same. Errors still propagate as exceptions.
    with _silenced():
        builder = BUILDERS[name](data_dir=os.fspath(root))
        prepared = builder.is_prepared()
    if not prepared:
        # Several processes of one run (leanjax.parallel.launch, a pod's hosts on a shared disk) may ask at
        # once: one builds, the others wait on the lock and then find it prepared.
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with _silenced():
                builder = BUILDERS[name](data_dir=os.fspath(root))
                prepared = builder.is_prepared()
            if not prepared:
                print(f"leanjax.data: building {name!r} into {root} (once)", file=sys.stderr)
                with _silenced():
                    builder.download_and_prepare()
    return builder


def _tfds_builder(name: str, root: pathlib.Path, download: bool):
    import tensorflow_datasets as tfds

    try:
        # Looks in TFDS's code registry, then for a prepared copy under `root`: no network.
        with _silenced():
            builder = tfds.builder(name, data_dir=os.fspath(root), file_format="array_record")
            prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetNotFoundError(
            f"tfds:{name}: TFDS has no builder called {name!r} and nothing is prepared under "
            f"{root / name}. Check the name against `tfds.list_builders()`."
        ) from None
    if not prepared:
        if not download:
            raise DatasetNotFoundError(
                f"tfds:{name} is not prepared under {root}. Prepare it once where the network is "
                f"reachable: leanjax.data.load('tfds:{name}', split, download=True), or "
                f"`tfds build {name} --data_dir {root} --file_format array_record`; "
                f"it then loads offline."
            )
        builder.download_and_prepare()
    return builder


def _check_split(name: str, split: str, valid: Sequence[str]) -> None:
    # "train[:10%]+test" -> {"train", "test"}
    requested = {part.split("[", 1)[0].strip() for part in split.split("+")}
    unknown = requested - set(valid)
    if unknown:
        raise ValueError(
            f"Dataset {name!r} has no split {sorted(unknown)}: valid splits are {sorted(valid)}"
        )


@contextlib.contextmanager
def _silenced():
    # absl calls `logging.basicConfig()` on its first message when the root logger has no
    # handler; inside the redirect that handler would write to the discarded buffer for good.
    # A temporary NullHandler keeps basicConfig from running.
    guard = logging.NullHandler()
    logging.root.addHandler(guard)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.root.removeHandler(guard)


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A source over in-memory arrays that share their leading dimension."""

    arrays: dict[str, np.ndarray]

    def __post_init__(self):
        lengths = {key: len(value) for key, value in self.arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource needs arrays of one common length, got {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        index = operator.index(index)  # a slice or an array here would silently return a batch
        return {key: value[index] for key, value in self.arrays.items()}


def split_texts(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, key: str = "text"
) -> list[str]:
    """Every example's `key` text in source order (cached per process: tokenizers and LM windows
    read the same corpus several times)."""
    return list(_split_texts(name, split, resolve_data_dir(data_dir), key))


@functools.lru_cache(maxsize=8)
def _split_texts(name: str, split: str, root: pathlib.Path, key: str) -> tuple[str, ...]:
    source = load(name, split, root)
    examples = source.__getitems__(range(len(source)))
    if examples and key not in examples[0]:
        fields = sorted(examples[0])
        raise KeyError(f"{name}/{split} has no text field {key!r}: fields are {fields}")
    return tuple(to_str(example[key]) for example in examples)


def to_str(value: str | bytes | np.ndarray) -> str:
    """TFDS text features come back as bytes (or 0-d arrays of bytes); tokenizers want str."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else value

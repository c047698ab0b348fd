"""Checkpoint files: finding them, refusing pickles, reading and streaming-writing safetensors.

Format: https://github.com/huggingface/safetensors#format (8-byte little-endian header length, a JSON
header `{name: {dtype, shape, data_offsets}}`, then the raw little-endian bytes). Reading goes through
`safetensors.safe_open(framework="numpy")`, which maps the file and copies one tensor at a time. Writing
is done here, tensor by tensor, because `safetensors.numpy.save_file` needs every tensor in memory at
once (a second full copy of the model).

Only safetensors are read: PyTorch `.bin`/`.pt` files are pickles, which can run arbitrary code when
loaded, so they are refused with an error rather than unpickled; a pickle renamed `.safetensors` is told
apart by its first bytes (the pickle protocol marker, or torch.save's zip header) and refused as one.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPE_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


class PickleRefusedError(ValueError):
    """A checkpoint is a pickle (PyTorch .bin/.pt); leanjax loads safetensors only."""


class CheckpointFileError(ValueError):
    """A safetensors file is unreadable (truncated, corrupt) or a sharded index points nowhere."""


def refuse_pickle(path: pathlib.Path, *, renamed: bool = False) -> None:
    what = f"a pickle (its first bytes say so, whatever its {path.suffix} name says)" if renamed else "a pickle"
    raise PickleRefusedError(
        f"{path}: refusing to load {what} checkpoint (unpickling runs arbitrary code). Convert it to "
        "safetensors first, e.g. transformers' model.save_pretrained(dir, safe_serialization=True).")


def looks_like_pickle(path: pathlib.Path) -> bool:
    """Whether the file starts as a pickle does (protocol 2-5: `0x80` then the protocol byte) or as
    `torch.save`'s zip archive (`PK\\x03\\x04`, a pickle inside), whatever its name says.

    A safetensors file starts with its JSON header's length (little-endian uint64) and then `{`; a header
    of 0x0280-0x05ff bytes begins `0x80 0x02`..`0x05` too, so a file with a well-formed safetensors start is
    never taken for a pickle."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return False
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def checkpoint_files(source: str | pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files of a checkpoint directory (sharded via the index file) or a single file.

    A file whose first bytes are a pickle's is refused as a pickle whatever its name.

    Args:
      source: a directory (with `model.safetensors.index.json` or `*.safetensors`) or one file.

    Returns:
      the safetensors files, in shard order.
    """
    files = _checkpoint_files(source)
    for f in files:
        if looks_like_pickle(f):
            refuse_pickle(f, renamed=True)
    return files


def _checkpoint_files(source: str | pathlib.Path) -> list[pathlib.Path]:
    path = pathlib.Path(source)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise CheckpointFileError(f"{path}: not a .safetensors file")
        return [path]
    if (path / INDEX_FILE).is_file():
        weight_map = json.loads((path / INDEX_FILE).read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointFileError(f"{path / INDEX_FILE}: no 'weight_map' object")
        shards = [path / name for name in dict.fromkeys(weight_map.values())]
        if missing := [str(s) for s in shards if not s.is_file()]:
            raise CheckpointFileError(f"{path / INDEX_FILE} names shards that do not exist: {missing}")
        return shards
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    if pickles := sorted(p for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES):
        refuse_pickle(pickles[0])
    raise CheckpointFileError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")


@contextlib.contextmanager
def open_safetensors(path: pathlib.Path):
    """`safe_open(path, "numpy")`, with truncated or corrupt files reported by name."""
    from safetensors import SafetensorError, safe_open

    if looks_like_pickle(path):
        refuse_pickle(path, renamed=path.suffix not in PICKLE_SUFFIXES)
    try:
        handle = safe_open(str(path), framework="numpy")
    except SafetensorError as e:
        raise CheckpointFileError(f"{path}: unreadable safetensors file (truncated or corrupt?): {e}") from None
    with handle as f:
        yield f


def header(path: pathlib.Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{name: (shape, safetensors dtype code)}` without reading any tensor data."""
    with open_safetensors(path) as f:
        out = {}
        for key in f.keys():
            s = f.get_slice(key)
            out[key] = (tuple(s.get_shape()), s.get_dtype())
        return out


def write_safetensors(path: pathlib.Path, tensors: Sequence[tuple[str, tuple[int, ...], np.dtype,
                                                                  Callable[[], np.ndarray]]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `(name, shape, dtype, produce)` entries, calling each `produce()` only when its turn comes.

    The header is built from the declared shapes and dtypes, so at most one tensor is materialised at a
    time; a produced array that disagrees with its declaration is an error naming it.

    Args:
      path: the file to write.
      tensors: `(name, shape, dtype, produce)` per tensor, in file order.
      metadata: the header's `__metadata__` strings (e.g. `{"format": "pt"}`).

    Returns:
      None.
    """
    entries, offset = {}, 0
    for name, shape, dtype, _ in tensors:
        dtype = np.dtype(dtype)
        if dtype.name not in _DTYPE_CODES:
            raise ValueError(f"{name}: dtype {dtype} has no safetensors code")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entries[name] = {"dtype": _DTYPE_CODES[dtype.name], "shape": list(shape),
                         "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        entries = {"__metadata__": metadata, **entries}
    head = json.dumps(entries, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data buffer starts 8-byte aligned
    with open(path, "wb") as out:
        out.write(np.uint64(len(head)).astype("<u8").tobytes())
        out.write(head)
        for name, shape, dtype, produce in tensors:
            array = np.asarray(produce())
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise ValueError(f"{name}: produced {array.dtype}{list(array.shape)}, declared "
                                 f"{np.dtype(dtype)}{list(shape)}")
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            out.write(little.reshape(-1).view(np.uint8))  # a view: no extra copy of the tensor


def iter_tensors(files: Sequence[pathlib.Path], keys_by_file: dict[pathlib.Path, list[str]]
                 ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield `(key, array)` for the requested keys, one tensor in memory at a time.

    Tensors are read with plain `read` calls at their header offsets, not through a memory map: a mapped
    shard's touched pages count in the process's resident memory until the file is closed, up to a whole
    shard on top of the tensor (measured by `leanjax.weights.load_peak`).
    """
    import ml_dtypes

    dtypes = {code: np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else getattr(ml_dtypes, name, name))
              for name, code in _DTYPE_CODES.items()}
    for path in files:
        wanted = keys_by_file.get(path, ())
        if not wanted:
            continue
        with open_safetensors(path):  # validates the file (and refuses pickles) before any read
            pass
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            entries = json.loads(f.read(size))
            for key in wanted:
                entry = entries[key]
                start, end = entry["data_offsets"]
                f.seek(8 + size + start)
                data = f.read(end - start)
                if len(data) != end - start:
                    raise CheckpointFileError(f"{path}: {key} is truncated ({len(data)} of {end - start} bytes)")
                dtype = dtypes[entry["dtype"]].newbyteorder("<")
                yield key, np.frombuffer(data, dtype).reshape(entry["shape"])

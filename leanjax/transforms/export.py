"""Leaving training: merged weights to safetensors, adapters alone in HF PEFT's format, and re-quantizing
a merged QLoRA model for serving.

- `export_merged`: every typed weight merged to a plain array, written as one safetensors file under the
  names a key map gives (e.g. the HF names of `leanjax.weights`).
- `export_peft`: only the adapters, as `adapter_model.safetensors` + `adapter_config.json` that HF PEFT's
  `PeftModel.from_pretrained` reads: `base_model.model.<module>.lora_A.weight` `[r, in]`,
  `...lora_B.weight` `[out, r]` (torch's `[out, in]` layout, the transpose of a Flax `[in, out]` kernel;
  extra input/output axes are flattened), DoRA's `...lora_magnitude_vector` `[out]`.
- `load_peft`: the inverse, a PEFT adapter directory (from PEFT or `export_peft`) as LoRA typed weights
  on a params tree, each module found through the model's `KeyMap`.
- `requantize`: merge each LoRA into its quantized base and quantize the result the same way, so a
  QLoRA fine-tune is served at the base model's size.

safetensors is imported only when writing (it is an `experiments` extra, not a core dependency).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from leanjax.transforms.layout import Layout
from leanjax.transforms.layout import resolve as resolve_layout
from leanjax.transforms.lora import LoRA
from leanjax.transforms.quant import FakeQuant, Quantized, encode
from leanjax.transforms.select import leaves_with_paths, select
from leanjax.transforms.trees import merge
from leanjax.transforms.typed import dense_compiled, is_typed

if TYPE_CHECKING:  # only a type: `import leanjax.transforms` stays free of the checkpoint machinery
    from leanjax.weights.keymaps import KeyMap


def _save(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
    try:
        from safetensors.numpy import save_file
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ImportError("writing safetensors needs `pip install safetensors` (leanjax[experiments])") from e
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)


def export_merged(params: Any, path: str, *,
                  to_names: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """Merge every typed weight and write the result to the safetensors file `path`.

    Args:
      params: a params tree with typed weights.
      path: the safetensors file to write.
      to_names: `to_names(merged_params) -> {name: array}` maps the params tree to the checkpoint's names and
        layouts (a key map such as HF's); default: the params paths with '.' separators.

    Returns:
      The `{name: array}` written.
    """
    merged = merge(params)
    if to_names is None:
        tensors = {p.replace("/", "."): x for p, x in leaves_with_paths(merged)}
    else:
        tensors = to_names(merged)
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    _save(tensors, path, metadata={"format": "pt"})
    return tensors


def _default_module_name(path: str, index: tuple[int, ...]) -> str:
    if index:
        raise ValueError(f"{path}: a stacked LoRA weight needs key_map= (or `module_name(path, layer_index)`) "
                         "to name each layer's module")
    parts = path.split("/")
    return ".".join(parts[:-1] if parts[-1] in ("kernel", "weight", "embedding") else parts)


def _template_regex(template: str) -> re.Pattern:
    """A leaf path ending in `template` ('{i}' a layer index), under any prefix ('encoder/', 'model/')."""
    return re.compile(r"(?:.*/)?" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z")


def _module_of(rule, path: str, stacked: bool) -> Callable[[int | None], str] | None:
    """`layer -> HF module name` if `rule` names the leaf at `path` (a stacked leaf drops '{i}/'), else None."""
    for template in rule.paths:
        if stacked and "{i}/" not in template:
            continue
        m = _template_regex(template.replace("{i}/", "") if stacked else template).match(path)
        if m is None:
            continue
        if len(rule.paths) > 1:
            raise ValueError(f"{path}: HF stores it fused with {rule.paths} in {rule.hf!r}; a PEFT adapter on "
                             "that module spans all of them, which a LoRA on one part cannot express")
        if not rule.hf.endswith(".weight"):
            raise ValueError(f"{path}: maps to {rule.hf!r}, which is not a module's .weight")
        module = rule.hf[:-len(".weight")]
        fixed = m.groupdict().get("i")
        return lambda i: module.format(i=fixed if i is None else i)
    return None


def key_map_module_name(key_map: KeyMap, prefix: str = "") -> Callable[[str, tuple[int, ...]], str]:
    """`module_name(path, index)` for `export_peft` from a `KeyMap`: the HF module each leaf belongs to.

    Args:
      key_map: the checkpoint family's table (`leanjax.weights.BERT`, `GPT2`, ...).
      prefix: prepended to every module name (e.g. 'bert.' for a BertForSequenceClassification).

    Returns:
      a function of the leaf path and its layer index (`(i,)` in a stacked leaf, `()` otherwise).
    """
    def module_name(path: str, index: tuple[int, ...]) -> str:
        for rule in key_map.rules:
            name = _module_of(rule, path, stacked=bool(index))
            if name is not None:
                return prefix + name(index[0] if index else None)
        raise ValueError(f"{path}: no rule of key map {key_map.name!r} names this leaf"
                         + (" as a stacked leaf" if index else ""))

    return module_name


def export_peft(params: Any, directory: str, *, key_map: KeyMap | None = None, module_prefix: str = "",
                module_name: Callable[[str, tuple[int, ...]], str] | None = None,
                base_model_name_or_path: str | None = None) -> dict[str, np.ndarray]:
    """Write the LoRA adapters of `params` as an HF PEFT adapter in `directory`.

    Args:
      params: a tree holding LoRA weights of one configuration (rank, alpha, variant, dropout).
      directory: created if needed; gets `adapter_model.safetensors` and `adapter_config.json`.
      key_map: the `KeyMap` of the checkpoint the model was loaded from: it names each leaf's HF module
        ('layers/3/attention/query/kernel' -> 'encoder.layer.3.attention.self.query'), stacked leaves too.
      module_prefix: prepended to module names from `key_map` (e.g. 'bert.' in a sequence classifier).
      module_name: instead of `key_map`, `module_name(path, index) -> HF module` (`index` the layer in a
        stacked weight, `()` otherwise). Without either, the path's '/' become '.' (unstacked only).
      base_model_name_or_path: recorded in the config for `PeftModel.from_pretrained`.

    Returns:
      the tensors written. Adapters span each layer's flattened input/output axes in the weight's layout
      (`lora_A` `[r, in_flat]`, `lora_B` `[out_flat, r]`), so an 'oi' (Equinox) or 'ioo' (per-head)
      kernel exports as the `nn.Linear` it corresponds to.
    """
    if key_map is not None and module_name is not None:
        raise ValueError("pass key_map or module_name, not both")
    if key_map is not None:
        module_name = key_map_module_name(key_map, module_prefix)
    module_name = module_name or _default_module_name
    adapters = [(p, x) for p, x in leaves_with_paths(params) if isinstance(x, LoRA)]
    if not adapters:
        raise ValueError("no LoRA weights in params")
    if multi := [p for p, x in adapters if x.n_adapters]:
        raise ValueError(f"{multi[0]}: stacks several adapters; export each adapter tree separately")
    configs = {(x.rank, x.alpha, x.rslora, x.magnitude is not None, x.dropout) for _, x in adapters}
    if len(configs) > 1:
        raise ValueError(f"PEFT holds one (r, alpha, rslora, dora, dropout) per adapter: {sorted(configs)}")
    ((rank, alpha, rslora, dora, dropout),) = configs

    tensors, modules = {}, set()
    for path, w in adapters:
        a, b = np.asarray(w.a), np.asarray(w.b)
        mag = None if w.magnitude is None else np.asarray(w.magnitude)
        stack = a.shape[:w.n_stack]
        for index in np.ndindex(*stack):
            name = module_name(path, tuple(int(i) for i in index))
            modules.add(name.rsplit(".", 1)[-1])
            prefix = f"{_PEFT_PREFIX}{name}"
            tensors[f"{prefix}.lora_A.weight"] = a[index].reshape(-1, rank).T
            tensors[f"{prefix}.lora_B.weight"] = b[index].reshape(rank, -1).T
            if mag is not None:
                tensors[f"{prefix}.lora_magnitude_vector"] = mag[index].reshape(-1)

    os.makedirs(directory, exist_ok=True)
    _save(tensors, os.path.join(directory, ADAPTER_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(modules),
        "use_rslora": rslora, "use_dora": dora, "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    return tensors


_PEFT_PREFIX = "base_model.model."
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_SUFFIXES = {".lora_A.weight": "a", ".lora_B.weight": "b", ".lora_magnitude_vector": "magnitude"}


def _read_adapter(directory: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """`(adapter_config, {module: {'a'|'b'|'magnitude': tensor}})` of a PEFT adapter directory."""
    from leanjax.weights.files import open_safetensors, refuse_pickle

    root = pathlib.Path(directory)
    config_path, weights = root / CONFIG_FILE, root / ADAPTER_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; a PEFT adapter directory holds {CONFIG_FILE}")
    if not weights.is_file():
        if (root / "adapter_model.bin").is_file():
            refuse_pickle(root / "adapter_model.bin")
        raise FileNotFoundError(f"{weights}: missing")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA adapters load")
    modules: dict[str, dict[str, np.ndarray]] = {}
    with open_safetensors(weights) as f:
        for key in f.keys():
            suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
            if suffix is None or not key.startswith(_PEFT_PREFIX):
                raise ValueError(f"{weights}: unexpected tensor {key!r} (expected {_PEFT_PREFIX}<module>"
                                 f"{{{', '.join(_SUFFIXES)}}})")
            module = key[len(_PEFT_PREFIX):-len(suffix)]
            modules.setdefault(module, {})[_SUFFIXES[suffix]] = f.get_tensor(key)
    return config, modules


def load_peft(directory: str, params: Any, *, key_map: KeyMap, module_prefix: str = "",
              layout: Layout = None) -> Any:
    """Load an HF PEFT LoRA adapter directory onto `params` as LoRA typed weights.

    Args:
      directory: holds `adapter_config.json` and `adapter_model.safetensors` (as `PeftModel.save_pretrained`
        or `export_peft` write them).
      params: the base model's params (plain or quantized leaves), e.g. from `functional(model)`.
      key_map: the `KeyMap` the base checkpoint was loaded with; it finds each module's leaf.
      module_prefix: removed from module names before matching (e.g. 'bert.').
      layout: the adapted weights' layout when not 2-D ('io') or stacked 2-D ('sio'); see `lora`.

    Returns:
      `params` with each adapted leaf a `LoRA` (DoRA with `use_dora`) whose forward equals PEFT's.
    """
    config, modules = _read_adapter(directory)
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    rank_pattern = config.get("rank_pattern") or config.get("alpha_pattern")
    if rank_pattern:
        raise ValueError(f"{directory}: per-module rank_pattern/alpha_pattern are not supported")
    leaves = dict(leaves_with_paths(params))
    found: dict[str, dict[int | None, dict[str, np.ndarray]]] = {}
    problems = []
    for module, parts in sorted(modules.items()):
        if missing := {"a", "b"} - set(parts):
            problems.append(f"module {module!r}: no {'/'.join(sorted(missing))} tensor")
            continue
        name = module[len(module_prefix):] if module.startswith(module_prefix) else module
        match = key_map.match(key_map.strip(name + ".weight"))
        target = None
        if match is not None:
            rule, i = match
            target = _leaf_for(rule, i, leaves)
        if target is None:
            problems.append(f"module {module!r}: no leaf of params matches it in key map {key_map.name!r}")
            continue
        path, row = target
        found.setdefault(path, {})[row] = parts
    for path, rows in found.items():
        if None not in rows:
            n = leaves[path].shape[0]
            if missing := sorted(set(range(n)) - set(rows)):
                problems.append(f"{path}: the adapter covers layers {sorted(rows)} of {n}, not {missing}")
    if problems:
        raise ValueError(f"{directory}: adapter does not fit params ({len(problems)} problems):\n  "
                         + "\n  ".join(problems))

    def one(path, leaf):
        if isinstance(leaf, LoRA):
            raise TypeError(f"{path}: already has a LoRA adapter")
        rows = found[path]
        default = None if None in rows or layout is not None else "s" + "io"
        n_stack, axes = resolve_layout(layout if layout is not None else default, path, leaf)
        shape = tuple(leaf.shape)[n_stack:]
        i_shape = tuple(n for n, k in zip(shape, axes) if k == "i")
        o_shape = tuple(n for n, k in zip(shape, axes) if k == "o")
        order = [None] if None in rows else list(range(leaf.shape[0]))
        dtype = leaf.dtype

        def stacked(fn):
            arrays = [fn(rows[r]) for r in order]
            return np.asarray(arrays[0] if None in rows else np.stack(arrays), dtype)

        try:
            a = stacked(lambda t: t["a"].T.reshape(*i_shape, rank))
            b = stacked(lambda t: t["b"].T.reshape(rank, *o_shape))
            mag = stacked(lambda t: t["magnitude"].reshape(o_shape)) if config.get("use_dora") else None
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path} {tuple(leaf.shape)} (layout {'s' * n_stack + axes!r}): adapter tensors "
                             f"do not fit: {e}") from None
        return LoRA(leaf, jnp.asarray(a), jnp.asarray(b), None if mag is None else jnp.asarray(mag),
                    alpha=alpha, rslora=bool(config.get("use_rslora")),
                    dropout=float(config.get("lora_dropout") or 0.0), axes=axes)

    return select(params, lambda path, _: path in found, one)


def _leaf_for(rule, i: int | None, leaves: dict[str, Any]) -> tuple[str, int | None] | None:
    """The params leaf (and layer row, for a stacked leaf) that `rule` at layer `i` names, or None."""
    if len(rule.paths) != 1:
        return None
    (template,) = rule.paths
    direct = _template_regex(template.format(i=i) if i is not None else template)
    hits = [p for p in leaves if direct.match(p)]
    if not hits and i is not None:
        stacked = _template_regex(template.replace("{i}/", ""))
        hits = [p for p in leaves if stacked.match(p) and len(leaves[p].shape) > 0 and i < leaves[p].shape[0]]
        return (hits[0], i) if len(hits) == 1 else None
    return (hits[0], None) if len(hits) == 1 else None


def requantize(params: Any) -> Any:
    """For serving: each LoRA over a quantized base merged and quantized as its base was; each fake-quantized
    weight encoded for real. Other LoRA weights are merged to plain arrays.

    Args:
      params: a trained params tree (LoRA / QLoRA / QAT weights).

    Returns:
      The params to serve.
    """

    def one(x):
        if isinstance(x, FakeQuant):
            return x.encode()
        if isinstance(x, LoRA):
            merged = dense_compiled(x)
            return encode(merged, **x.base.format()) if isinstance(x.base, Quantized) else merged
        return x

    return jax.tree.map(one, params, is_leaf=is_typed)


"""Leaving training: merged weights to safetensors, adapters alone in HF PEFT's format, and re-quantizing
a merged QLoRA model for serving.

- `export_merged`: every typed weight merged to a plain array, written as one safetensors file under the
  names a key map gives (e.g. the HF names of `leanjax.weights`).
- `export_peft`: only the adapters, as `adapter_model.safetensors` + `adapter_config.json` that HF PEFT's
  `PeftModel.from_pretrained` reads: `base_model.model.<module>.lora_A.weight` `[r, in]`,
  `...lora_B.weight` `[out, r]` (torch's `[out, in]` layout, the transpose of a Flax `[in, out]` kernel;
  extra input/output axes are flattened), DoRA's `...lora_magnitude_vector` `[out]`.
- `requantize`: merge each LoRA into its quantized base and quantize the result the same way, so a
  QLoRA fine-tune is served at the base model's size.

safetensors is imported only when writing (it is an `experiments` extra, not a core dependency).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from leanjax.transforms.lora import LoRA
from leanjax.transforms.quant import FakeQuant, Quantized, encode
from leanjax.transforms.select import leaves_with_paths
from leanjax.transforms.trees import merge
from leanjax.transforms.typed import dense_compiled, is_typed


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
        raise ValueError(f"{path}: a stacked LoRA weight needs `module_name(path, layer_index)` to name "
                         "each layer's module")
    parts = path.split("/")
    return ".".join(parts[:-1] if parts[-1] in ("kernel", "weight", "embedding") else parts)


def export_peft(params: Any, directory: str, *,
              module_name: Callable[[str, tuple[int, ...]], str] = _default_module_name,
              base_model_name_or_path: str | None = None) -> dict[str, np.ndarray]:
    """Write the LoRA adapters of `params` as an HF PEFT adapter in `directory`.

    Kernels are assumed in the Flax layout `[in..., out...]`.

    Args:
      params: a params tree with LoRA weights.
      directory: where `adapter_model.safetensors` and `adapter_config.json` go.
      module_name: `module_name(path, index)` gives the HF module a LoRA leaf at `path` adapts (e.g.
        'encoder.layer.3.attention.self.query'); `index` is the layer's index in a stacked weight, `()`
        otherwise.
      base_model_name_or_path: recorded in the adapter config.

    Returns:
      The tensors written, by PEFT name.
    """
    adapters = [(p, x) for p, x in leaves_with_paths(params) if isinstance(x, LoRA)]
    if not adapters:
        raise ValueError("no LoRA weights in params")
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
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = a[index].reshape(-1, rank).T
            tensors[f"{prefix}.lora_B.weight"] = b[index].reshape(rank, -1).T
            if mag is not None:
                tensors[f"{prefix}.lora_magnitude_vector"] = mag[index].reshape(-1)

    os.makedirs(directory, exist_ok=True)
    _save(tensors, os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(modules),
        "use_rslora": rslora, "use_dora": dora, "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return tensors


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


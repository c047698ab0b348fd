"""Open-weight decoder checkpoints (Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3) into `leanjax.models.Decoder`.

`load_decoder` reads `config.json` into a `DecoderConfig`, builds the model abstractly (`nnx.eval_shape`: no
memory), and streams the safetensors shards into it through the family's declarative key map
(`leanjax.weights.keymaps`), with `leanjax.weights.hf.load_into`: every missing, unexpected or mis-shaped
tensor is reported at once before any is read, one tensor is in flight at a time, and `on_load` may
quantize each leaf as it arrives (QLoRA's NF4 base without a float copy of the model). `export_hf` writes it
back under the HF names.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from leanjax.models.decoder import Decoder, DecoderConfig
from leanjax.transforms.quant import encode
from leanjax.weights.hf import OnLoad, load_into, read_checkpoint, read_tokenizer
from leanjax.weights.keymaps import key_map_for


@dataclasses.dataclass
class LoadedDecoder:
    model: Decoder
    config: DecoderConfig
    hf_config: dict
    tokenizer: Any
    path: pathlib.Path


def load_decoder(source: str | pathlib.Path, *, dtype: str | None = None, on_load: OnLoad | None = None,
                 config_overrides: Mapping[str, Any] | None = None) -> LoadedDecoder:
    """Load a HF decoder checkpoint (config.json + safetensors, sharded or not [+ tokenizer.json]).

    Args:
      source: a local checkpoint directory, or a hub id such as "Qwen/Qwen3-0.6B" (needs the network).
      dtype: storage dtype of the params (cast on load; "bfloat16" halves host and device memory).
      on_load: per-leaf hook `on_load(path, array) -> leaf` (see `leanjax.weights.hf.load_into`).
      config_overrides: `DecoderConfig` fields to replace (e.g. `{"dtype": "bfloat16", "remat": "dots"}`).

    Returns:
      `LoadedDecoder(model, config, hf_config, tokenizer, path)`.
    """
    directory, files, hf_config = read_checkpoint(source)
    overrides = dict(config_overrides or {})
    if dtype is not None:
        overrides["param_dtype"] = dtype
    config = DecoderConfig.from_hf_config(hf_config, **overrides)
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    model = load_into(abstract, files, key_map_for(hf_config), on_load=on_load)
    return LoadedDecoder(model=model, config=config, hf_config=hf_config, tokenizer=read_tokenizer(directory),
                         path=directory)


def quantize_on_load(kernels: str = r"layers/.*/kernel", *, bits: int = 4, scheme: str = "nf4",
                     group_size: int | None = 64) -> OnLoad:
    """An `on_load` hook that stores the matching layer kernels quantized (QLoRA's NF4 base by default).

    Each stacked kernel `[L, in, out]` is quantized one layer at a time and the layers' codes and scales
    stacked, so the float transient is one layer's kernel, not the whole stack: the same values as
    `transforms.quantize(params, kernels, ..., layout="sio")` after loading, without the float model.

    Args:
      kernels: regex (`re.fullmatch`) of the param paths to quantize; everything else is placed as loaded.
      bits: 8 or 4.
      scheme: 'int' or 'nf4'.
      group_size: entries per scale along the input axis (None: one scale per output column).

    Returns:
      The hook, for `load_decoder(..., on_load=...)`.
    """
    pattern = re.compile(kernels)

    def on_load(path: str, array):
        if not pattern.fullmatch(path):
            return jax.device_put(array)
        if array.ndim != 3:
            raise ValueError(f"{path}: quantize_on_load expects stacked [layers, in, out] kernels, got {array.shape}")
        layers = [encode(jnp.asarray(array[i]), bits=bits, scheme=scheme, group_size=group_size, axis=-2, path=path)
                  for i in range(array.shape[0])]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)

    return on_load

"""How much host memory loading a checkpoint takes: peak RSS of a fresh process over the checkpoint's bytes.

`write_random_decoder` writes a random decoder checkpoint of any size as HF safetensors shards with a
`model.safetensors.index.json` (one tensor in memory at a time), and `measure_load_peak` loads it with
`leanjax.weights.decoders.load_decoder` in a fresh Python process and reports
`(peak RSS - RSS before loading) / checkpoint bytes`: 1.0 means the loaded params and nothing else (the
params of a model loaded in its stored dtype are the checkpoint's bytes); what is above 1 is the loader's
transient memory (one tensor read, one stacked layer leaf being filled). With `quantize="nf4"` each layer
kernel is quantized as soon as its stacked leaf is complete, so the model never exists in float.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from leanjax.weights.files import INDEX_FILE, write_safetensors


def _hf_tensors(hf: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    d, f, n = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    hd = hf.get("head_dim") or d // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * hd, hf["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (hf["vocab_size"], d))]
    for i in range(n):
        layer = f"model.layers.{i}"
        out += [(f"{layer}.self_attn.q_proj.weight", (q, d)), (f"{layer}.self_attn.k_proj.weight", (kv, d)),
                (f"{layer}.self_attn.v_proj.weight", (kv, d)), (f"{layer}.self_attn.o_proj.weight", (d, q)),
                (f"{layer}.mlp.gate_proj.weight", (f, d)), (f"{layer}.mlp.up_proj.weight", (f, d)),
                (f"{layer}.mlp.down_proj.weight", (d, f)), (f"{layer}.input_layernorm.weight", (d,)),
                (f"{layer}.post_attention_layernorm.weight", (d,))]
    out.append(("model.norm.weight", (d,)))
    if not hf.get("tie_word_embeddings", True):
        out.append(("lm_head.weight", (hf["vocab_size"], d)))
    return out


def write_random_decoder(directory: str | pathlib.Path, hf_config: Mapping[str, Any], *, shards: int,
                         dtype: str = "bfloat16", seed: int = 0) -> int:
    """Write a random Llama-layout checkpoint (config.json, `shards` safetensors files, the index).

    Args:
      directory: created if needed.
      hf_config: a `model_type: llama` config.json dict (its sizes set the checkpoint's).
      shards: how many files to spread the tensors over (in order, about equal bytes).
      dtype: the stored dtype ("bfloat16" as released checkpoints are, or "float32").
      seed: the random values' seed.

    Returns:
      The checkpoint's tensor bytes.
    """
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(dtype)
    tensors = _hf_tensors(hf_config)
    sizes = [int(np.prod(s)) * np_dtype.itemsize for _, s in tensors]
    total, budget = sum(sizes), sum(sizes) / shards
    rng = np.random.default_rng(seed)
    groups: list[list[int]] = [[]]
    filled = 0.0
    for i, size in enumerate(sizes):
        if groups[-1] and filled + size > budget * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        filled += size
    weight_map = {}
    for s, group in enumerate(groups):
        name = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        entries = [(tensors[i][0], tensors[i][1], np_dtype,
                    lambda shape=tensors[i][1]: (0.02 * rng.standard_normal(shape, np.float32)).astype(np_dtype))
                   for i in group]
        write_safetensors(directory / name, entries, metadata={"format": "pt"})
        weight_map.update({tensors[i][0]: name for i in group})
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(dict(hf_config), indent=2))
    return total


_PROBE = r"""
import json, resource, sys
import jax, numpy as np
from leanjax.weights.decoders import load_decoder, quantize_on_load

directory, dtype, scheme = sys.argv[1], sys.argv[2] or None, sys.argv[3] or None
jax.numpy.zeros(1).block_until_ready()  # backend up before the baseline
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before = rss()

nf4 = quantize_on_load(bits=4, scheme="nf4", group_size=64)

model = load_decoder(directory, dtype=dtype, on_load=nf4 if scheme == "nf4" else None).model
jax.block_until_ready(jax.tree.leaves(model))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak, "after": rss()}))
"""


def measure_load_peak(directory: str | pathlib.Path, *, dtype: str | None = None, quantize: str | None = None,
                      python: str = sys.executable) -> dict[str, float]:
    """Load the checkpoint in `directory` in a fresh process and report its peak host memory.

    Args:
      directory: a decoder checkpoint (config.json, safetensors shards).
      dtype: the params' dtype (None: float32; the stored dtype keeps the loaded bytes equal to the file's).
      quantize: None, or "nf4" to quantize every layer kernel on load.
      python: the interpreter (with leanjax importable).

    Returns:
      `{"checkpoint_bytes", "peak_bytes"` (peak RSS minus RSS before loading), `"resident_bytes"` (after),
      `"load_peak_ratio"`}.
    """
    directory = pathlib.Path(directory)
    index = json.loads((directory / INDEX_FILE).read_text()) if (directory / INDEX_FILE).is_file() else None
    files = sorted(directory.glob("*.safetensors"))
    total = index["metadata"]["total_size"] if index else sum(f.stat().st_size for f in files)
    proc = subprocess.run([python, "-c", _PROBE, str(directory), dtype or "", quantize or ""], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"loading {directory} failed:\n{proc.stderr[-3000:]}")
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = probe["peak"] - probe["before"]
    return {"checkpoint_bytes": total, "peak_bytes": peak, "resident_bytes": probe["after"] - probe["before"],
            "load_peak_ratio": peak / total}

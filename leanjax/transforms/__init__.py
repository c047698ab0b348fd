"""Typed-weight transforms: LoRA / rsLoRA / DoRA adapters, int8 / int4 / NF4 quantization and fake
quantization, as replacements of params leaves that any `fn(params, *args)` runs on through `apply`.

    params = quantize(params, r".*kernel", bits=4, scheme="nf4", group_size=64)     # QLoRA base
    params = lora(params, r".*attention/(query|value)/kernel", rank=8, key=key)     # adapters on it
    mask = trainable(params)                                                         # adapters only
    loss = apply(loss_fn)(params, batch)                                             # any function

They nest (LoRA over a quantized base is QLoRA), dequantize one layer at a time next to each matmul, and
warn once, naming the operation, when an operation has no rule and a full weight must be built.
"""

from leanjax.transforms.export import export_merged, export_peft, requantize
from leanjax.transforms.lora import LoRA, lora, unmerge, with_dropout_rng
from leanjax.transforms.quant import (
    NF4,
    FakeQuant,
    Int4,
    Int8,
    Quantized,
    dequantize,
    encode,
    fake_quantize,
    quantize,
)
from leanjax.transforms.select import leaves_with_paths
from leanjax.transforms.trees import combine, merge, partition, trainable, weight_bytes
from leanjax.transforms.typed import TypedWeight, apply, dense, is_typed

__all__ = [
    "NF4", "FakeQuant", "Int4", "Int8", "LoRA", "Quantized", "TypedWeight", "apply", "combine", "dense",
    "dequantize", "encode", "export_merged", "export_peft", "fake_quantize", "is_typed", "leaves_with_paths",
    "lora", "merge", "partition", "quantize", "requantize", "trainable", "unmerge", "weight_bytes",
    "with_dropout_rng",
]

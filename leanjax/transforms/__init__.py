"""Typed-weight transforms: LoRA / rsLoRA / DoRA adapters, int8 / int4 / NF4 quantization and fake
quantization, as replacements of params leaves that any `fn(params, *args)` runs on through `apply`.

    params = quantize(params, r".*kernel", bits=4, scheme="nf4", group_size=64)     # QLoRA base
    params = lora(params, r".*attention/(query|value)/kernel", rank=8, key=key)     # adapters on it
    mask = trainable(params)                                                         # adapters only
    loss = apply(loss_fn)(params, batch)                                             # any function
    loss, grads = value_and_grad(loss_fn)(params, batch)                             # adapters' grads

Kernels of 3 or more axes need `layout=` ('sio' stacked layers, 'ioo' per-head attention, 'oi' for
Equinox/PyTorch `[out, in]`...; see `leanjax.transforms.layout`). docs/transforms.md has worked examples.

They nest (LoRA over a quantized base is QLoRA), dequantize one layer at a time next to each matmul, and
warn once, naming the operation, when an operation has no rule and a full weight must be built.
"""

from leanjax.transforms import remat_rule  # noqa: F401  (registers the quax rule for jax.checkpoint)
from leanjax.transforms.export import export_merged, export_peft, load_peft, requantize
from leanjax.transforms.grad import grad, value_and_grad
from leanjax.transforms.layout import LayoutError, stacked_io
from leanjax.transforms.lora import LoRA, lora, stack_adapters, unmerge, with_adapter_ids, with_dropout_rng
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
from leanjax.transforms.w8a8 import W8A8, serve_int8

__all__ = [
    "NF4", "FakeQuant", "Int4", "Int8", "LoRA", "LayoutError", "Quantized", "TypedWeight", "apply", "combine", "dense",
    "dequantize", "encode", "export_merged", "export_peft", "fake_quantize", "is_typed", "leaves_with_paths",
    "lora", "merge", "partition", "quantize", "requantize", "trainable", "unmerge", "weight_bytes",
    "with_dropout_rng", "W8A8", "serve_int8", "grad", "value_and_grad", "load_peft", "stack_adapters",
    "with_adapter_ids", "stacked_io",
]

# Pruning (masks, schedules, N:M), structured compaction, packed 2:4 weights, distillation losses.
from leanjax.transforms.compact import (  # noqa: E402
    Group,
    Slot,
    cnn_groups,
    compact,
    mlp_groups,
    structured_masks,
    transformer_groups,
)
from leanjax.transforms.distill import (  # noqa: E402
    cache_topk,
    distill_trainable,
    distillation_loss,
    kd_loss,
    offline_distillation_loss,
    topk_kd_loss,
)
from leanjax.transforms.prune import (  # noqa: E402
    apply_masks,
    complete_masks,
    gradual_pruning,
    keep_masks,
    magnitude,
    masks_of,
    nm_masks,
    polynomial_schedule,
    prune_by_schedule,
    top_scores,
)
from leanjax.transforms.sparse24 import Packed24, encode24, pack24  # noqa: E402

__all__ += [
    "Group", "Slot", "cnn_groups", "compact", "mlp_groups", "structured_masks", "transformer_groups",
    "cache_topk", "distill_trainable", "distillation_loss", "kd_loss", "offline_distillation_loss",
    "topk_kd_loss", "apply_masks", "complete_masks", "gradual_pruning", "keep_masks", "magnitude", "masks_of",
    "nm_masks", "polynomial_schedule",
    "prune_by_schedule", "top_scores", "Packed24", "encode24", "pack24",
]

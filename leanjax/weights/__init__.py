"""Open-weight import/export: HF safetensors <-> leanjax models through declarative key maps.

`load_pretrained("minilm")` gives the shipped all-MiniLM-L6-v2 as a leanjax model with its tokenizer;
`load_into` / `export_hf` are the streaming building blocks; `BERT` and `GPT2` are the key-map tables.
"""

from leanjax.weights.files import CheckpointFileError, PickleRefusedError, checkpoint_files, write_safetensors
from leanjax.weights.hf import (
    Pretrained,
    WeightsMismatchError,
    export_hf,
    hf_config_from,
    load_into,
    load_pretrained,
    resolve_source,
    transformer_prefix,
)
from leanjax.weights.keymaps import BERT, GPT2, KEY_MAPS, KeyMap, Rule, key_map_for

__all__ = [
    "BERT", "GPT2", "KEY_MAPS", "CheckpointFileError", "KeyMap", "PickleRefusedError", "Pretrained", "Rule",
    "WeightsMismatchError", "checkpoint_files", "export_hf", "hf_config_from", "key_map_for", "load_into",
    "load_pretrained", "resolve_source", "transformer_prefix", "write_safetensors",
]

# Warm-start embeddings (leanjax.weights.embeddings).
from leanjax.weights.embeddings import EmbeddingInit, glove_vectors, init_embeddings, project, train_rows  # noqa: E402

__all__ += ["EmbeddingInit", "glove_vectors", "init_embeddings", "project", "train_rows"]

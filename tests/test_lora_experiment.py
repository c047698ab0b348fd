"""The lora experiment: arm construction on a tiny model, and `:tiny` end to end (MiniLM's first 2 layers)."""

import json

import jax
import pytest
from flax import nnx

from leanjax import transforms
from leanjax.experiments import _launch, _minilm, lora
from leanjax.models import SequenceClassifier, TransformerConfig, functional

HEADLINE = {"full.accuracy", "lora.accuracy", "qlora.accuracy", "lora.trainable_fraction", "lora.memory_ratio",
            "qlora.memory_ratio", "qlora_remat.memory_ratio", "lora.step_time_ratio", "qlora.step_time_ratio"}


def _params():
    config = TransformerConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                               max_position_embeddings=16, scan_layers=True)
    return functional(SequenceClassifier(config, 3, rngs=nnx.Rngs(0)))[1]


def test_adapter_arms_train_adapters_and_head_only():
    params = _params()
    kw = dict(rank=4, alpha=8.0, group_size=64, seed=0)
    full, full_mask = _minilm.arm_params(params, "full", **kw)
    assert all(jax.tree.leaves(full_mask))
    for arm in ("lora", "qlora"):
        p, mask = _minilm.arm_params(params, arm, **kw)
        kernel = p["encoder"]["layers"]["intermediate"]["kernel"]
        assert isinstance(kernel, transforms.LoRA)
        assert isinstance(kernel.base, transforms.NF4) == (arm == "qlora")
        word = p["encoder"]["embeddings"]["word"]["embedding"]
        assert isinstance(word, transforms.NF4) == (arm == "qlora")
        assert all(jax.tree.leaves(mask["classifier"]))
        assert not any(jax.tree.leaves(mask["encoder"]["embeddings"]))
        assert mask["encoder"]["layers"]["intermediate"]["kernel"].a is True
    with pytest.raises(ValueError, match="unknown arm"):
        _minilm.arm_params(params, "dora", **kw)


@pytest.mark.slow  # loads the 22.7M-param MiniLM, compiles 4 memory audits and 3 train steps: minutes
def test_tiny_writes_every_headline_key(tmp_path):
    code = _launch.main("lora", lora.run, ["--config", "configs/lora/default.py:tiny", "--workdir", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["headline"]) == HEADLINE
    ratios = summary["metrics"]["memory_ratio"]
    assert ratios["qlora_remat"] < ratios["qlora"] < ratios["lora"] < 1.0

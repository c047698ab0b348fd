"""HF PEFT's LoRA train step on a tiny Llama, timed on CPU: the other side of `llm_finetune`'s `peft_speed_ratio`.

Run as a script in the interpreter that has torch, transformers and peft (the `bench` extra; never a leanjax
dependency, so this file imports no leanjax and no jax):

    /work/torchvenv/bin/python leanjax/experiments/_peft_bench.py '{"hidden_size": 256, ...}'

The JSON argument names the model (`LlamaConfig` fields: hidden_size, intermediate_size, num_layers,
num_heads, num_kv_heads, vocab_size, head_dim, rope_theta, rms_norm_eps), the LoRA (rank, alpha,
target_modules), the batch (batch, seq_len), the timing (steps, warmup, threads) and the learning rate.
The step is the usual PEFT one: `get_peft_model(LlamaForCausalLM(config), LoraConfig(...))` in f32, the
model's own next-token loss, backward, `torch.optim.AdamW` over the adapters. Prints one JSON line:
`{"steps_per_s", "step_s" (median), "best_step_s", "step_times_s", "loss", "versions", "threads"}`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main(spec: dict) -> dict:
    import peft
    import torch
    import transformers

    torch.manual_seed(spec.get("seed", 0))
    torch.set_num_threads(spec.get("threads", 2))
    config = transformers.LlamaConfig(
        vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"], num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"], head_dim=spec["head_dim"], rope_theta=spec.get("rope_theta", 1e4),
        rms_norm_eps=spec.get("rms_norm_eps", 1e-5), tie_word_embeddings=spec.get("tie_word_embeddings", True),
        max_position_embeddings=max(spec["seq_len"], 128), attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    lora = peft.LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                           target_modules=list(spec["target_modules"]), task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.get("lr", 1e-3))
    generator = torch.Generator().manual_seed(spec.get("seed", 0))
    ids = torch.randint(0, spec["vocab_size"], (spec["batch"], spec["seq_len"]), generator=generator)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(spec.get("warmup", 2)):
        step()
    times = []
    for _ in range(spec.get("steps", 5)):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"steps_per_s": 1.0 / median, "step_s": median, "best_step_s": min(times), "step_times_s": times,
            "loss": loss, "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__}}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)

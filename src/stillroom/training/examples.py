"""Chat fine-tuning examples -> token ids, with labels on the assistant turns only.

Each example is rendered with the base model's own chat template. An assistant turn's labels are the
tokens between the prompt rendered with `add_generation_prompt=True` and the conversation rendered
through that turn, so the model learns the answer and its end-of-turn token but never the prompt.
Assistant messages with `"weight": 0` (OpenAI's multi-turn option) carry no loss. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stillroom.errors import BadRequestError

IGNORE_INDEX = -100


class ChatTokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer used here."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside assistant turns

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadRequestError(f"Line {number} of the training file is not JSON: {exc.msg}.") from exc
            if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
                raise BadRequestError(f"Line {number} of the training file has no 'messages' list.")
            yield value


def _plain(message: dict[str, Any]) -> dict[str, Any]:
    """The message as chat templates expect it: text content (parts joined), no `weight`."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if content is None and message.get("tool_calls"):
        content = json.dumps([call.get("function", call) for call in message["tool_calls"]], ensure_ascii=False)
    plain = {k: v for k, v in message.items() if k != "weight"}
    plain["content"] = content or ""
    return plain


def _render(tokenizer: ChatTokenizer, messages: Sequence[dict[str, Any]], tools: Any, prompt: bool) -> str:
    text = tokenizer.apply_chat_template(list(messages), tools=tools, tokenize=False, add_generation_prompt=prompt)
    assert isinstance(text, str)
    return text


def assistant_spans(tokenizer: ChatTokenizer, example: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trained assistant turns."""
    messages = [_plain(m) for m in example["messages"]]
    tools = example.get("tools") or None
    text = _render(tokenizer, messages, tools, prompt=False)
    spans = []
    for i, message in enumerate(example["messages"]):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, messages[:i], tools, prompt=True)
        through = _render(tokenizer, messages[: i + 1], tools, prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise BadRequestError("The base model's chat template does not render conversations as prefixes.")
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_example(tokenizer: ChatTokenizer, example: dict[str, Any], max_length: int) -> TokenizedExample:
    """Token ids and labels, truncated to `max_length` tokens."""
    text, spans = assistant_spans(tokenizer, example)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])[:max_length]
    labels = []
    for token, (start, _end) in zip(ids, encoded["offset_mapping"], strict=False):
        inside = any(lo <= start < hi for lo, hi in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return TokenizedExample(input_ids=ids, labels=labels)


def tokenize_file(tokenizer: ChatTokenizer, path: Path, max_length: int) -> list[TokenizedExample]:
    """Every example of a fine-tuning JSONL that keeps at least one trained token."""
    examples = [tokenize_example(tokenizer, example, max_length) for example in read_jsonl(path)]
    return [example for example in examples if example.n_trained > 0]

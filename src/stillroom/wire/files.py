"""Files on the wire: purposes, and the line-by-line check of fine-tuning JSONL (the OpenAI cookbook's
format rules, each failure named by line number and rule)."""

from __future__ import annotations

from typing import Any

import orjson

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
RESULT_PURPOSES = ("assistants_output", "batch_output", "fine-tune-results")
MIN_EXAMPLES = 10
MAX_LINE_BYTES = 64 * 1024 * 1024

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_MESSAGE_KEYS = frozenset(("role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id"))
_EXAMPLE_KEYS = frozenset(("messages", "tools", "parallel_tool_calls", "functions"))


class FileFormatError(ValueError):
    """A line of a fine-tuning file breaks a format rule."""

    def __init__(self, line: int, rule: str, detail: str) -> None:
        super().__init__(f"line {line}: {detail} [{rule}]")
        self.line = line
        self.rule = rule
        self.detail = detail


def check_example(example: Any) -> None:
    """Raise ValueError((rule, detail)) when one decoded line is not a chat fine-tuning example."""
    if not isinstance(example, dict):
        raise ValueError(("data_type", "each line must be a JSON object"))
    if "input" in example and "preferred_output" in example:  # DPO: check the conversation it prefers
        preferred = example.get("preferred_output")
        non_preferred = example.get("non_preferred_output")
        if (
            not isinstance(example["input"], dict)
            or not isinstance(preferred, list)
            or not isinstance(non_preferred, list)
        ):
            raise ValueError(
                (
                    "data_type",
                    "a preference example needs input{messages}, preferred_output[] and non_preferred_output[]",
                )
            )
        _check_messages(example["input"].get("messages"), need_assistant=False)
        _check_messages(preferred + non_preferred, need_assistant=True)
        return
    unknown = set(example) - _EXAMPLE_KEYS
    if "messages" not in example or not isinstance(example["messages"], list) or not example["messages"]:
        raise ValueError(("missing_messages_list", "each line needs a non-empty 'messages' list"))
    if unknown:
        raise ValueError(("example_unrecognized_key", f"unrecognized key(s) {sorted(unknown)}"))
    _check_messages(example["messages"], need_assistant=True)


def _check_messages(messages: Any, *, need_assistant: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(("missing_messages_list", "each line needs a non-empty 'messages' list"))
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(("message_missing_key", f"message {i} has no 'role'"))
        if "content" not in message and not message.get("tool_calls") and not message.get("function_call"):
            raise ValueError(("message_missing_key", f"message {i} has no 'content'"))
        extra = set(message) - _MESSAGE_KEYS
        if extra:
            raise ValueError(("message_unrecognized_key", f"message {i} has unrecognized key(s) {sorted(extra)}"))
        if message["role"] not in _ROLES:
            raise ValueError(("unrecognized_role", f"message {i} has unrecognized role {message['role']!r}"))
        content = message.get("content")
        is_call = bool(message.get("tool_calls") or message.get("function_call"))
        if not (isinstance(content, str | list) or (content is None and is_call)):
            raise ValueError(("missing_content", f"message {i} needs string content or a tool call"))
        if "weight" in message and message["weight"] not in (0, 1):
            raise ValueError(("invalid_weight", f"message {i} has weight {message['weight']!r}; use 0 or 1"))
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ValueError(("example_missing_assistant_message", "each example needs an assistant message"))


class FineTuneValidator:
    """Fed a fine-tuning file chunk by chunk (constant memory: at most one line is held), counts examples and
    raises FileFormatError at the first line that breaks a rule."""

    def __init__(self) -> None:
        self.examples = 0
        self._line = 0
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._partial += data[start:]
                if len(self._partial) > MAX_LINE_BYTES:
                    raise FileFormatError(self._line + 1, "line_too_long", f"longer than {MAX_LINE_BYTES} bytes")
                return
            if self._partial:
                self._partial += data[start:end]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = data[start:end]
            self._check_line(line)
            start = end + 1

    def finish(self) -> int:
        if self._partial:
            self._check_line(bytes(self._partial))
            self._partial.clear()
        return self.examples

    def _check_line(self, line: bytes) -> None:
        self._line += 1
        if not line.strip():
            return
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FileFormatError(self._line, "invalid_json", f"not valid JSON ({exc})") from None
        try:
            check_example(example)
        except ValueError as exc:
            rule, detail = exc.args[0]
            raise FileFormatError(self._line, rule, detail) from None
        self.examples += 1

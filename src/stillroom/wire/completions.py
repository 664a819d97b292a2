"""Chat completion objects: assembling streamed chunks, and rendering what was stored."""

from __future__ import annotations

from typing import Any

_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
_DELTA_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "function_call", "audio", "annotations"})


class StreamAssembler:
    """Folds `chat.completion.chunk` objects into the `chat.completion` a non-streamed call returns.

    Besides OpenAI's fields it keeps Azure's `prompt_filter_results` (sent in a chunk of their own) and
    per-choice `content_filter_results`, and joins text deltas it does not know (`reasoning_content`).
    `system_fingerprint` and `usage` are left out when no chunk had them: OpenAI's schema has them as a
    string and an object, never null.
    """

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.prompt_filter_results: list[Any] = []
        self.chunks = 0
        self._choices: dict[int, _ChoiceState] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks += 1
        for field in _HEAD_FIELDS:
            value = chunk.get(field)
            if value:
                self.head[field] = value  # Azure's filter-results chunk has id "", created 0, model ""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("prompt_filter_results"), list):
            self.prompt_filter_results.extend(chunk["prompt_filter_results"])
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _ChoiceState(index)
            state.add(choice)

    @property
    def is_finished(self) -> bool:
        """True when every choice seen has a finish_reason."""
        return bool(self._choices) and all(c.finish_reason for c in self._choices.values())

    def result(self) -> dict[str, Any]:
        completion: dict[str, Any] = {
            "id": self.head.get("id"),
            "object": "chat.completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "choices": [self._choices[i].result() for i in sorted(self._choices)],
        }
        if self.usage is not None:
            completion["usage"] = self.usage
        if isinstance(self.head.get("system_fingerprint"), str):
            completion["system_fingerprint"] = self.head["system_fingerprint"]
        if "service_tier" in self.head:
            completion["service_tier"] = self.head["service_tier"]
        if self.prompt_filter_results:
            completion["prompt_filter_results"] = self.prompt_filter_results
        return completion


class _ChoiceState:
    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.audio: dict[str, Any] | None = None
        self.annotations: list[Any] = []
        self.other_text: dict[str, list[str]] = {}
        self.content_filter_results: dict[str, Any] | None = None
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None
        self.saw_content = False

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            self.role = delta["role"]
        if delta.get("content") is not None:
            self.saw_content = True
            self.content.append(delta["content"])
        if delta.get("refusal"):
            self.refusal.append(delta["refusal"])
        for call in delta.get("tool_calls") or ():
            self._add_tool_call(call)
        if delta.get("function_call"):
            fc = self.function_call or {"name": "", "arguments": ""}
            fc["name"] = _joined_name(fc["name"], delta["function_call"].get("name"))
            fc["arguments"] += delta["function_call"].get("arguments") or ""
            self.function_call = fc
        if isinstance(delta.get("audio"), dict):
            self._add_audio(delta["audio"])
        if isinstance(delta.get("annotations"), list):
            self.annotations.extend(delta["annotations"])
        for key, value in delta.items():
            if key not in _DELTA_FIELDS and isinstance(value, str):
                self.other_text.setdefault(key, []).append(value)
        if isinstance(choice.get("content_filter_results"), dict):
            self.content_filter_results = {**(self.content_filter_results or {}), **choice["content_filter_results"]}
        logprobs = choice.get("logprobs")
        if logprobs:
            merged = self.logprobs or {}
            for key, items in logprobs.items():
                if items:
                    merged.setdefault(key, []).extend(items)
            self.logprobs = merged
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def _add_tool_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.get(call.get("index", len(self.tool_calls)))
        if slot is None:
            slot = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            self.tool_calls[call.get("index", len(self.tool_calls))] = slot
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        slot["function"]["name"] = _joined_name(slot["function"]["name"], function.get("name"))
        slot["function"]["arguments"] += function.get("arguments") or ""

    def _add_audio(self, piece: dict[str, Any]) -> None:
        """Audio output arrives as base64 `data` and `transcript` pieces; `id` and `expires_at` once."""
        audio = self.audio if self.audio is not None else {}
        for key, value in piece.items():
            if key in ("data", "transcript") and isinstance(value, str):
                audio[key] = audio.get(key, "") + value
            elif value is not None:
                audio[key] = value
        self.audio = audio

    def result(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.content) if self.saw_content else None,
            "refusal": "".join(self.refusal) if self.refusal else None,
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.function_call:
            message["function_call"] = self.function_call
        if self.audio is not None:
            message["audio"] = self.audio
        if self.annotations:
            message["annotations"] = self.annotations
        for key, pieces in self.other_text.items():
            message[key] = "".join(pieces)
        result: dict[str, Any] = {
            "index": self.index,
            "message": message,
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
        }
        if self.content_filter_results is not None:
            result["content_filter_results"] = self.content_filter_results
        return result


def _joined_name(so_far: str, piece: str | None) -> str:
    """OpenAI sends a function name once, in the first delta; some servers (llama-cpp-python) repeat it
    in every delta. A piece that repeats the whole name so far is not appended again."""
    if not piece or piece == so_far:
        return so_far
    return so_far + piece


def render_stored_completion(
    completion_id: str,
    response: dict[str, Any],
    request: dict[str, Any],
    metadata: dict[str, str] | None,
    extension: dict[str, Any],
) -> dict[str, Any]:
    """The stored `chat.completion` as OpenAI's GET/list return it: the response plus request echoes."""
    stored = dict(response)
    stored["id"] = completion_id
    stored["object"] = "chat.completion"
    stored["request_id"] = extension.get("request_id")
    stored["seed"] = request.get("seed")
    stored["top_p"] = request.get("top_p", 1.0)
    stored["temperature"] = request.get("temperature", 1.0)
    stored["presence_penalty"] = request.get("presence_penalty", 0.0)
    stored["frequency_penalty"] = request.get("frequency_penalty", 0.0)
    stored["tool_choice"] = request.get("tool_choice")
    stored["tools"] = request.get("tools")
    stored["response_format"] = request.get("response_format")
    stored["input_user"] = request.get("user")
    stored["metadata"] = metadata or {}
    stored["stillroom"] = extension
    return stored


def render_store_message(completion_id: str, index: int, message: dict[str, Any]) -> dict[str, Any]:
    """One input message as `GET /chat/completions/{id}/messages` lists it."""
    content = message.get("content")
    parts = None
    if isinstance(content, list):
        parts = content
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = "".join(texts) if texts else None
    rendered = {
        "id": f"{completion_id}-{index}",
        "role": message.get("role"),
        "content": content,
        "name": message.get("name"),
        "content_parts": parts,
    }
    for extra in ("refusal", "tool_calls", "tool_call_id", "function_call", "audio"):
        if extra in message:
            rendered[extra] = message[extra]
    return rendered

"""llama-cpp-python's chat output, reshaped into what OpenAI sends.

llama-cpp-python 0.3 answers a forced tool call with both `tool_calls` and the legacy `function_call`, and
its streamed tool calls repeat `id`, `type` and `function.name` in every delta, so clients that assemble
deltas the way OpenAI streams them (the SDK's stream helper, LangChain) build `get_weatherget_weather...`.
OpenAI sends `function_call` only to clients that sent the legacy `functions` (the local provider never
passes those on), names a tool call once, in its first delta, and always sends `message.refusal`.
"""

from __future__ import annotations

from typing import Any


def tidy_message(message: dict[str, Any]) -> None:
    """A non-streamed choice's message, in place."""
    message.pop("function_call", None)
    message.setdefault("refusal", None)


class ChunkTidier:
    """Rewrites the choices of streamed chunks in place, remembering which tool calls were announced."""

    def __init__(self) -> None:
        self._announced: set[tuple[int, int]] = set()

    def tidy(self, choice: dict[str, Any]) -> bool:
        """Reshape one streamed choice; True when its delta carries generated text (a token, roughly)."""
        delta = choice.get("delta") or {}
        tidied: dict[str, Any] = {}
        generated = False
        if delta.get("role"):
            # OpenAI's first delta: the role, content ("" for text, null before tool calls) and refusal.
            tidied = {"role": delta["role"], "content": delta.get("content", ""), "refusal": None}
        elif delta.get("content") is not None:
            tidied["content"] = delta["content"]
            generated = bool(delta["content"])
        calls = [self._call(choice.get("index", 0), call) for call in delta.get("tool_calls") or ()]
        if calls:
            tidied["tool_calls"] = calls
            generated = generated or any(c["function"]["arguments"] for c in calls)
        choice["delta"] = tidied
        return generated

    def _call(self, choice_index: int, call: dict[str, Any]) -> dict[str, Any]:
        index = call.get("index", 0)
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if (choice_index, index) in self._announced:
            return {"index": index, "function": {"arguments": arguments}}
        self._announced.add((choice_index, index))
        return {
            "index": index,
            "id": call.get("id"),
            "type": call.get("type") or "function",
            "function": {"name": function.get("name"), "arguments": arguments},
        }

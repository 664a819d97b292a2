"""LLM-as-judge graders: `label_model` and `score_model`, through any model Stillroom routes to.

The judge is asked with `response_format: json_schema` (`{"label": <one of labels>}` or
`{"score": number}`), so a provider that honours structured output (OpenAI, and the embedded model through
a llama.cpp grammar) always answers something that parses. If an answer still is not that JSON, a
label judge accepts a reply that is exactly one label (or names exactly one), and a score judge a reply
that is a number; otherwise the item fails with the reply quoted. Scores are clipped into `range`.
Judges sample at temperature 0 unless `sampling_params` says otherwise. A score judge passes at
`pass_threshold`, by default the middle of `range`.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import orjson

from stillroom.errors import BadRequestError, StillroomError
from stillroom.evals.results import Grade, Usage
from stillroom.evals.templates import check_template, render

ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text")


class Sampler(Protocol):
    """Answers a chat completion request for a configured model (a `chat.completion` object)."""

    async def complete(self, model: str, body: dict[str, Any]) -> dict[str, Any]: ...


def normalise_message(message: Any, param: str) -> dict[str, Any]:
    """`{role, content: str}` -> `{type: "message", role, content: {type: "input_text", text}}`."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise BadRequestError(f"Invalid '{param}': expected a message with role in {list(ROLES)}.", param=param)
    content = message.get("content")
    if isinstance(content, str):
        check_template(content, f"{param}.content")
        content = {"type": "input_text", "text": content}
    elif isinstance(content, dict | list):
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                check_template(str(part.get("text", "")), f"{param}.content")
    else:
        raise BadRequestError(f"Invalid '{param}.content'.", param=f"{param}.content")
    return {"type": "message", "role": message["role"], "content": content}


def chat_messages(messages: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    """Stored (normalised) messages rendered for a chat completion request."""
    return [{"role": m["role"], "content": _render_content(m["content"], context)} for m in messages]


def _render_content(content: Any, context: dict[str, Any]) -> Any:
    if isinstance(content, str):
        return render(content, context)
    if isinstance(content, dict):
        if content.get("type") in _TEXT_PARTS:
            return render(str(content.get("text", "")), context)
        return [_chat_part(content, context)]
    parts = [_chat_part(p, context) for p in content]
    if all(p.get("type") == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _chat_part(part: Any, context: dict[str, Any]) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": render(part, context)}
    if part.get("type") in _TEXT_PARTS:
        return {"type": "text", "text": render(str(part.get("text", "")), context)}
    if part.get("type") == "input_image":
        return {"type": "image_url", "image_url": {"url": render(str(part.get("image_url", "")), context)}}
    return dict(part)


def validate_judge(grader: dict[str, Any], param: str) -> None:
    if not isinstance(grader.get("model"), str) or not grader["model"]:
        raise BadRequestError(f"Missing '{param}.model'.", param=f"{param}.model")
    messages = grader.get("input")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError(f"Invalid '{param}.input': expected a list of messages.", param=f"{param}.input")
    grader["input"] = [normalise_message(m, f"{param}.input.{i}") for i, m in enumerate(messages)]
    if grader["type"] == "label_model":
        labels, passing = grader.get("labels"), grader.get("passing_labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise BadRequestError(f"Invalid '{param}.labels': expected strings.", param=f"{param}.labels")
        if not isinstance(passing, list) or not passing or not set(passing) <= set(labels):
            raise BadRequestError(
                f"Invalid '{param}.passing_labels': expected a non-empty subset of labels.",
                param=f"{param}.passing_labels",
            )
        return
    bounds = grader.get("range", [0, 1])
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        or bounds[0] >= bounds[1]
    ):
        raise BadRequestError(f"Invalid '{param}.range': expected [min, max].", param=f"{param}.range")
    threshold = grader.get("pass_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise BadRequestError(f"Invalid '{param}.pass_threshold'.", param=f"{param}.pass_threshold")
    if grader.get("sampling_params") is not None and not isinstance(grader["sampling_params"], dict):
        raise BadRequestError(f"Invalid '{param}.sampling_params'.", param=f"{param}.sampling_params")


def _schema(grader: dict[str, Any]) -> dict[str, Any]:
    if grader["type"] == "label_model":
        properties: dict[str, Any] = {"label": {"type": "string", "enum": list(grader["labels"])}}
        required = ["label"]
    else:
        properties = {"score": {"type": "number"}}
        required = ["score"]
    return {
        "type": "json_schema",
        "json_schema": {
            "name": grader["type"],
            "strict": True,
            "schema": {"type": "object", "properties": properties, "required": required, "additionalProperties": False},
        },
    }


def request_body(grader: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    params = dict(grader.get("sampling_params") or {})
    body: dict[str, Any] = {
        "model": grader["model"],
        "messages": chat_messages(grader["input"], context),
        "response_format": _schema(grader),
        "temperature": params.get("temperature", 0),
    }
    for key in ("top_p", "seed", "reasoning_effort"):
        if params.get(key) is not None:
            body[key] = params[key]
    limit = params.get("max_completions_tokens") or params.get("max_completion_tokens")
    if limit is not None:
        body["max_completion_tokens"] = limit
    return body


async def judge(grader: dict[str, Any], context: dict[str, Any], sampler: Sampler) -> Grade:
    body = request_body(grader, context)
    try:
        completion = await sampler.complete(grader["model"], body)
    except StillroomError as exc:
        return Grade(0.0, False, f"the judge model {grader['model']!r} failed: {exc.message}")
    usage = _usage(completion)
    choice = (completion.get("choices") or [{}])[0]
    reply = str((choice.get("message") or {}).get("content") or "")
    sample = {"input": body["messages"], "output": [{"role": "assistant", "content": reply}], "model": grader["model"]}
    if grader["type"] == "label_model":
        label = _parse_label(reply, grader["labels"])
        if label is None:
            return Grade(0.0, False, f"the judge answered no label: {reply[:200]!r}", sample, usage)
        passed = label in grader["passing_labels"]
        sample["label"] = label
        return Grade(1.0 if passed else 0.0, passed, None, sample, usage)
    score = _parse_score(reply)
    if score is None:
        return Grade(0.0, False, f"the judge answered no score: {reply[:200]!r}", sample, usage)
    low, high = grader.get("range", [0, 1])
    score = min(float(high), max(float(low), score))
    threshold = grader.get("pass_threshold")
    threshold = (low + high) / 2 if threshold is None else threshold
    return Grade(score, score >= threshold, None, sample, usage)


def _usage(completion: dict[str, Any]) -> Usage:
    usage = completion.get("usage") or {}
    model = str(completion.get("model") or "")
    cached = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
    return {
        model: {
            "invocation_count": 1,
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "total_tokens": int(usage.get("total_tokens") or 0),
            "cached_tokens": int(cached),
        }
    }


def _parse_label(reply: str, labels: list[str]) -> str | None:
    try:
        parsed = orjson.loads(reply)
        if isinstance(parsed, dict) and parsed.get("label") in labels:
            return str(parsed["label"])
    except orjson.JSONDecodeError:
        pass
    text = reply.strip().strip('"').strip()
    if text in labels:
        return text
    named = [label for label in labels if re.search(rf"\b{re.escape(label)}\b", reply, re.IGNORECASE)]
    return named[0] if len(named) == 1 else None


def _parse_score(reply: str) -> float | None:
    try:
        parsed = orjson.loads(reply)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        parsed = parsed.get("score")
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return float(parsed)
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*", reply)
    return float(match.group(1)) if match else None

"""The `openai` and `azure` providers, forwarding to a second Stillroom process over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from tests.conftest import GATEWAY_KEY, UPSTREAM_KEY
from tests.live import LiveServer

PROMPT = [{"role": "user", "content": "Say yes."}]


@pytest.mark.parametrize("model", ["relay", "relay-azure"])
def test_forwarded_completion_is_returned_and_stored(client: openai.OpenAI, model: str, tag: str) -> None:
    answer = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=4, store=True, metadata={"tag": tag}, temperature=0
    )
    assert answer.choices[0].message.content
    stored = client.chat.completions.retrieve(answer.id)
    assert stored.choices[0].message.content == answer.choices[0].message.content
    assert (stored.model_extra or {})["stillroom"]["provider"] == ("azure" if model == "relay-azure" else "openai")
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, model=model)] == [answer.id]


@pytest.mark.parametrize("model", ["relay", "relay-azure"])
def test_forwarded_stream_is_relayed_and_stored(client: openai.OpenAI, model: str, tag: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=PROMPT,
            max_tokens=6,
            store=True,
            metadata={"tag": tag},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert stored.choices[0].message.content == text
    assert stored.usage is not None and chunks[-1].usage is not None
    assert stored.usage.total_tokens == chunks[-1].usage.total_tokens


def test_store_and_metadata_are_not_forwarded_upstream(client: openai.OpenAI, upstream: LiveServer, tag: str) -> None:
    client.chat.completions.create(model="relay", messages=PROMPT, max_tokens=1, store=True, metadata={"tag": tag})
    direct = openai.OpenAI(base_url=upstream.url + "/v1", api_key=UPSTREAM_KEY, max_retries=0)
    assert direct.chat.completions.list(metadata={"tag": tag}).data == []
    direct.close()


def test_upstream_error_is_relayed_and_nothing_stored(
    client: openai.OpenAI, engine: Engine, server: LiveServer
) -> None:
    before = count_rows(engine)
    with pytest.raises(openai.NotFoundError) as info:  # the upstream Stillroom has no such model
        client.chat.completions.create(model="relay-missing", messages=PROMPT, store=True)
    assert info.value.code == "model_not_found"
    assert "no-such-model" in info.value.message
    assert count_rows(engine) == before


def test_unreachable_upstream_is_a_502_and_nothing_stored(client: openai.OpenAI, engine: Engine) -> None:
    before = count_rows(engine)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="unreachable", messages=PROMPT, store=True)
    assert info.value.status_code == 502
    assert info.value.code == "bad_gateway"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="unreachable", messages=PROMPT, store=True, stream=True)
    assert count_rows(engine) == before


def test_upstream_key_is_never_stored_or_logged(
    client: openai.OpenAI, server: LiveServer, upstream: LiveServer, engine: Engine, tag: str
) -> None:
    client.chat.completions.create(model="relay", messages=PROMPT, max_tokens=1, store=True, metadata={"tag": tag})
    with engine.connect() as conn:
        dump = "\n".join(
            str(row)
            for table in ("completions", "message_contents", "completion_metadata")
            for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
        )
    assert UPSTREAM_KEY not in dump and GATEWAY_KEY not in dump
    assert UPSTREAM_KEY not in server.log() and GATEWAY_KEY not in server.log()
    assert UPSTREAM_KEY not in upstream.log()


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_pass_through_and_are_stored_assembled(client: openai.OpenAI, tag: str, stream: bool) -> None:
    """tools/tool_choice reach the real model (SmolLM2 via the upstream Stillroom), which must call the tool."""
    arguments: dict[str, Any] = {
        "model": "relay",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 40,
        "temperature": 0,
        "store": True,
        "metadata": {"tag": tag},
    }
    if stream:
        chunks = list(client.chat.completions.create(**arguments, stream=True))
        completion_id = chunks[0].id
        sent = "".join(
            call.function.arguments or ""
            for chunk in chunks
            if chunk.choices
            for call in chunk.choices[0].delta.tool_calls or []
            if call.function
        )
    else:
        answer = client.chat.completions.create(**arguments)
        completion_id = answer.id
        assert answer.choices[0].message.tool_calls
        sent = answer.choices[0].message.tool_calls[0].function.arguments  # type: ignore[union-attr]
    stored = client.chat.completions.retrieve(completion_id)
    calls = stored.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert calls[0].function.arguments == sent  # type: ignore[union-attr]
    assert "city" in json.loads(sent)
    assert stored.choices[0].finish_reason == "tool_calls"
    assert (stored.model_extra or {})["tools"] == [WEATHER_TOOL]

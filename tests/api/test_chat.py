"""Creating chat completions through the real SDK: OpenAI and Azure clients, plain and streamed."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from tests.conftest import AZURE_API_VERSION, GATEWAY_KEY, LOCAL_MODEL
from tests.envelope import assert_openai_error
from tests.live import LiveServer

PROMPT = [{"role": "user", "content": "Name a colour."}]


def test_stored_create_returns_the_answer_and_keeps_it(client: openai.OpenAI, tag: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=LOCAL_MODEL, messages=PROMPT, max_tokens=8, store=True, metadata={"tag": tag}, temperature=0
    )
    assert raw.headers["x-stillroom-stored"] == "true"
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-") and len(answer.id) == len("chatcmpl-") + 29
    assert answer.choices[0].message.content

    stored = client.chat.completions.retrieve(answer.id)
    assert stored.id == answer.id
    assert stored.choices[0].message.content == answer.choices[0].message.content
    assert stored.choices[0].finish_reason == answer.choices[0].finish_reason
    assert stored.usage == answer.usage
    assert stored.metadata == {"tag": tag}
    extra = stored.model_extra or {}
    assert extra["temperature"] == 0
    assert extra["stillroom"]["provider"] == "local"
    assert extra["stillroom"]["incomplete"] is False
    assert extra["request_id"] == raw.headers["x-request-id"]


@pytest.mark.parametrize("store", [False, None])
def test_create_without_store_keeps_nothing(client: openai.OpenAI, engine: Engine, store: bool | None) -> None:
    before = count_rows(engine)
    extra = {} if store is None else {"store": store}
    raw = client.chat.completions.with_raw_response.create(model=LOCAL_MODEL, messages=PROMPT, max_tokens=4, **extra)
    assert "x-stillroom-stored" not in raw.headers
    answer = raw.parse()
    assert count_rows(engine) == before
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(answer.id)


def test_streamed_completion_is_stored_as_a_plain_call_would_return_it(client: openai.OpenAI, tag: str) -> None:
    stream = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=PROMPT,
        max_tokens=12,
        store=True,
        metadata={"tag": tag},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None

    stored = client.chat.completions.retrieve(ids.pop())
    assert stored.object == "chat.completion"
    assert stored.choices[0].message.role == "assistant"
    assert stored.choices[0].message.content == text
    assert stored.choices[0].finish_reason == finish[-1]
    assert stored.usage is not None and stored.usage.completion_tokens == usage.completion_tokens
    assert stored.usage.total_tokens == usage.total_tokens
    assert (stored.model_extra or {})["stillroom"]["stream"] is True


def test_abandoned_stream_is_stored_and_marked_incomplete(client: openai.OpenAI, server: LiveServer, tag: str) -> None:
    body = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": 400,
        "store": True,
        "metadata": {"tag": tag},
        "stream": True,
    }
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data: ")]
    completion_id = orjson.loads(received[0][6:])["id"]
    deadline = time.monotonic() + 30
    page = client.chat.completions.list(metadata={"tag": tag})
    while not page.data and time.monotonic() < deadline:
        time.sleep(0.05)
        page = client.chat.completions.list(metadata={"tag": tag})
    assert [c.id for c in page.data] == [completion_id]
    stored = page.data[0]
    assert (stored.model_extra or {})["stillroom"]["incomplete"] is True
    assert stored.choices[0].finish_reason is None


def test_n_choices_are_all_returned_and_stored(client: openai.OpenAI, tag: str) -> None:
    answer = client.chat.completions.create(
        model=LOCAL_MODEL, messages=PROMPT, max_tokens=4, n=2, store=True, metadata={"tag": tag}
    )
    assert [c.index for c in answer.choices] == [0, 1]
    stored = client.chat.completions.retrieve(answer.id)
    assert [c.index for c in stored.choices] == [0, 1]


def test_azure_deployment_create_list_and_retrieve(azure_client: openai.AzureOpenAI, tag: str) -> None:
    answer = azure_client.chat.completions.create(
        model=LOCAL_MODEL, messages=PROMPT, max_tokens=4, store=True, metadata={"tag": tag}
    )
    page = azure_client.chat.completions.list(metadata={"tag": tag})
    assert [c.id for c in page.data] == [answer.id]
    assert azure_client.chat.completions.retrieve(answer.id).metadata == {"tag": tag}
    messages = azure_client.chat.completions.messages.list(answer.id)
    assert [m.content for m in messages.data] == [PROMPT[0]["content"]]


def test_azure_deployment_in_client_lists_under_deployment_path(server: LiveServer, tag: str) -> None:
    pinned = openai.AzureOpenAI(
        azure_endpoint=server.url,
        azure_deployment=LOCAL_MODEL,
        api_key=GATEWAY_KEY,
        api_version=AZURE_API_VERSION,
        max_retries=0,
    )
    answer = pinned.chat.completions.create(
        model="ignored-by-azure", messages=PROMPT, max_tokens=4, store=True, metadata={"tag": tag}
    )
    assert [c.id for c in pinned.chat.completions.list(metadata={"tag": tag}).data] == [answer.id]
    pinned.close()


def test_azure_v1_style_paths_work_with_the_plain_client(server: LiveServer, tag: str) -> None:
    v1 = openai.OpenAI(base_url=server.url + "/openai/v1", api_key=GATEWAY_KEY, max_retries=0)
    answer = v1.chat.completions.create(
        model=LOCAL_MODEL, messages=PROMPT, max_tokens=4, store=True, metadata={"tag": tag}
    )
    assert [c.id for c in v1.chat.completions.list(metadata={"tag": tag}).data] == [answer.id]
    v1.close()


def test_models_lists_every_configured_model_on_both_paths(
    client: openai.OpenAI, azure_client: openai.AzureOpenAI
) -> None:
    expected = {LOCAL_MODEL, "relay", "relay-azure", "relay-missing", "unreachable"}
    assert {m.id for m in client.models.list()} == expected
    assert {m.id for m in azure_client.models.list()} == expected
    assert client.models.retrieve("relay").owned_by == "openai"


def test_requests_without_the_server_key_are_refused(server: LiveServer) -> None:
    anonymous = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        anonymous.chat.completions.list()
    assert info.value.code == "invalid_api_key"
    anonymous.close()
    assert httpx.get(server.url + "/v1/models").status_code == 401
    ok = httpx.get(server.url + "/openai/models?api-version=x", headers={"api-key": GATEWAY_KEY})
    assert ok.status_code == 200


# --- the embedded model speaks OpenAI exactly (issue 6, items 10, 13 and 14) ---


class Colour(BaseModel):
    name: str = Field(max_length=24)
    hex: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_CALL: Any = {
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "max_tokens": 40,
    "temperature": 0,
}


def _post(server: LiveServer, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def _sse(server: LiveServer, body: dict[str, Any]) -> list[str]:
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        return [line for line in resp.iter_lines() if line]


@pytest.mark.parametrize("model", [LOCAL_MODEL, "relay"])
def test_parse_with_a_pydantic_model_follows_the_schema(client: openai.OpenAI, model: str, tag: str) -> None:
    """response_format json_schema constrains the embedded model (a llama.cpp grammar), so `.parse` works."""
    answer = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Name a colour."}],
        response_format=Colour,
        max_tokens=60,
        temperature=0,
        store=True,
        metadata={"tag": tag},
    )
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Colour) and parsed.name
    stored = client.chat.completions.retrieve(answer.id)
    assert Colour.model_validate_json(stored.choices[0].message.content or "") == parsed
    assert (stored.model_extra or {})["response_format"]["json_schema"]["name"] == "Colour"


def test_stream_helper_assembles_a_tool_call_named_once(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=LOCAL_MODEL, **WEATHER_CALL) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    deltas = [
        call
        for e in events
        if e.type == "chunk" and e.chunk.choices
        for call in e.chunk.choices[0].delta.tool_calls or []
    ]
    assert deltas[0].id == calls[0].id and deltas[0].type == "function"  # once, in the first delta, as OpenAI
    assert all(d.id is None and d.type is None and (d.function is None or d.function.name is None) for d in deltas[1:])


def test_tool_call_answers_have_no_legacy_function_call(server: LiveServer) -> None:
    message = _post(server, {"model": LOCAL_MODEL, **WEATHER_CALL}).json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "function_call" not in message
    assert message["refusal"] is None


def test_local_answers_carry_refusal_null(server: LiveServer) -> None:
    message = _post(server, {"model": LOCAL_MODEL, "messages": PROMPT, "max_tokens": 4}).json()["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None


def test_local_model_streams_n_choices(client: openai.OpenAI, tag: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=PROMPT,
            max_tokens=6,
            n=2,
            stream=True,
            store=True,
            metadata={"tag": tag},
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert [(c.index, c.message.content) for c in stored.choices] == [(0, texts[0]), (1, texts[1])]
    assert stored.usage is not None and chunks[-1].usage == stored.usage


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_prompt_over_the_context_window_is_a_400(client: openai.OpenAI, engine: Engine, stream: bool, tag: str) -> None:
    before = count_rows(engine)
    long_prompt = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=long_prompt,
            store=True,
            metadata={"tag": tag},
            stream=stream,  # type: ignore[arg-type]
        )
    error = assert_openai_error(info.value.response, 400, "invalid_request_error", "messages")
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in error["message"]
    assert count_rows(engine) == before


@pytest.mark.parametrize("model", [LOCAL_MODEL, "relay"])
def test_stored_stream_has_usage_even_when_the_client_did_not_ask(
    client: openai.OpenAI, server: LiveServer, model: str, tag: str
) -> None:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": 6,
        "stream": True,
        "store": True,
        "metadata": {"tag": tag},
    }
    lines = _sse(server, body)
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert all(chunk["choices"] and "usage" not in chunk for chunk in chunks)  # as the client asked: none
    raw = httpx.get(
        f"{server.url}/v1/chat/completions/{chunks[0]['id']}", headers={"authorization": f"Bearer {GATEWAY_KEY}"}
    ).json()
    assert raw["usage"]["completion_tokens"] >= 1 and raw["usage"]["total_tokens"] > raw["usage"]["prompt_tokens"]
    assert isinstance(raw.get("system_fingerprint", ""), str)  # a string or absent, never null
    assert raw["choices"][0]["message"]["refusal"] is None


def test_stored_completion_records_a_seed_that_reproduces_it(client: openai.OpenAI, tag: str) -> None:
    prompt = [{"role": "user", "content": "Tell me a story about a fox."}]
    first = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=prompt,
        max_tokens=16,
        temperature=1,
        store=True,
        metadata={"tag": tag},  # type: ignore[arg-type]
    )
    seed = (client.chat.completions.retrieve(first.id).model_extra or {})["seed"]
    assert isinstance(seed, int)
    again = client.chat.completions.create(model=LOCAL_MODEL, messages=prompt, max_tokens=16, temperature=1, seed=seed)  # type: ignore[arg-type]
    assert again.choices[0].message.content == first.choices[0].message.content

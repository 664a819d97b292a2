"""Creating chat completions through the real SDK: OpenAI and Azure clients, plain and streamed."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from tests.conftest import AZURE_API_VERSION, GATEWAY_KEY, LOCAL_MODEL
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

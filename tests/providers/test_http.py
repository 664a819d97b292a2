"""The `openai` and `azure` providers, forwarding to a second Stillroom process over real HTTP, and to THE
fake upstream (tests/fake_upstream.py) where an upstream must misbehave in ways a real one will not on cue."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from stillroom.store.db import make_engine
from tests.conftest import GATEWAY_KEY, LOCAL_MODEL, UPSTREAM_KEY
from tests.envelope import assert_openai_error
from tests.live import LiveServer, fake_models_config, start_fake_upstream, start_server

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


def test_unreachable_upstream_names_its_host(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="unreachable", messages=PROMPT, stream=stream)
        assert "127.0.0.1:9" in info.value.message and "'unreachable'" in info.value.message


# --- upstreams that misbehave: THE fake upstream (tests/fake_upstream.py), and the real one with a wrong key ---

HOSTILE_KEY = "sk-test-hostile-0123456789"
WRONG_UPSTREAM_KEY = "sk-test-wrong-upstream-key-5555"
HOSTILE_MODELS: dict[str, tuple[str, float | None]] = {
    "refused-401": ("fault-401", None),
    "refused-403": ("fault-403", None),
    "moved": ("fault-redirect", None),
    "not-json": ("fault-not-json", None),
    "array": ("fault-array", None),
    "bad-chunk": ("fault-bad-chunk", None),
    "array-chunk": ("fault-array-chunk", None),
    "azure-filters": ("azure-filters", None),
    "echo": ("echo", None),
    "fault-error-event": ("fault-error-event", None),
}


@pytest.fixture(scope="module")
def hostile(
    db_url: str, upstream: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, Engine]]:
    tmp = tmp_path_factory.mktemp("hostile")
    fake = start_fake_upstream(tmp / "fake_upstream.log")
    config = fake_models_config(fake.url, HOSTILE_MODELS) + (
        f'\n[[models]]\nname = "relay-wrong-key"\nprovider = "openai"\nbase_url = "{upstream.url}/v1"\n'
        f'api_key_env = "HOSTILE_UPSTREAM_KEY"\nupstream_model = "{LOCAL_MODEL}"\n'
    )
    live = start_server(
        tmp,
        db_url,
        config=config,
        api_key=HOSTILE_KEY,
        env={"HOSTILE_UPSTREAM_KEY": WRONG_UPSTREAM_KEY},
        name="hostile",
    )
    engine = make_engine(live.database_url)
    yield live, engine
    engine.dispose()
    live.stop()
    fake.stop()


@pytest.fixture
def sdk(hostile: tuple[LiveServer, Engine]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=hostile[0].url + "/v1", api_key=HOSTILE_KEY, max_retries=0, timeout=30) as client:
        yield client


def _create(sdk: openai.OpenAI, model: str, stream: bool, tag: str, **extra: Any) -> Any:
    answer = sdk.chat.completions.create(
        model=model, messages=PROMPT, store=True, metadata={"tag": tag}, stream=stream, **extra
    )
    return list(answer) if stream else answer


def _sse_lines(server: LiveServer, body: dict[str, Any]) -> list[str]:
    headers = {"authorization": f"Bearer {HOSTILE_KEY}"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as resp:
        assert resp.status_code == 200
        return [line for line in resp.iter_lines() if line]


def _poll_list(sdk: openai.OpenAI, tag: str) -> list[Any]:
    deadline = time.monotonic() + 15
    page = sdk.chat.completions.list(metadata={"tag": tag})
    while not page.data and time.monotonic() < deadline:
        time.sleep(0.02)
        page = sdk.chat.completions.list(metadata={"tag": tag})
    return list(page.data)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("model", "status"), [("refused-401", 401), ("refused-403", 403), ("relay-wrong-key", 401)])
def test_upstream_refusing_our_key_is_a_502_naming_the_model(
    sdk: openai.OpenAI, hostile: tuple[LiveServer, Engine], model: str, status: int, stream: bool, tag: str
) -> None:
    before = count_rows(hostile[1])
    with pytest.raises(openai.InternalServerError) as info:
        _create(sdk, model, stream, tag)
    error = assert_openai_error(info.value.response, 502, "server_error")
    assert error["code"] == "upstream_auth_failed"
    assert f"'{model}'" in error["message"] and f"HTTP {status}" in error["message"]
    assert "sk-test" not in error["message"]  # the upstream's message quotes part of its key: not passed on
    assert count_rows(hostile[1]) == before


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_redirect_is_not_followed(
    sdk: openai.OpenAI, hostile: tuple[LiveServer, Engine], stream: bool, tag: str
) -> None:
    before = count_rows(hostile[1])
    with pytest.raises(openai.InternalServerError) as info:
        _create(sdk, "moved", stream, tag)
    error = assert_openai_error(info.value.response, 502, "server_error")
    assert "redirect" in error["message"] and "/redirected/chat/completions" in error["message"]
    assert count_rows(hostile[1]) == before


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("store", [False, True], ids=["unstored", "stored"])
@pytest.mark.parametrize("model", ["not-json", "array"])
def test_upstream_200_that_is_not_a_json_object_is_a_502(
    sdk: openai.OpenAI, hostile: tuple[LiveServer, Engine], model: str, store: bool, stream: bool
) -> None:
    before = count_rows(hostile[1])
    with pytest.raises(openai.InternalServerError) as info:
        answer = sdk.chat.completions.create(model=model, messages=PROMPT, store=store, stream=stream)
        if stream:
            list(answer)  # type: ignore[arg-type]
    error = assert_openai_error(info.value.response, 502, "server_error")
    assert error["code"] == "bad_gateway" and f"'{model}'" in error["message"]
    assert count_rows(hostile[1]) == before


@pytest.mark.parametrize("model", ["bad-chunk", "array-chunk"])
def test_malformed_chunk_mid_stream_ends_with_one_error_event_and_keeps_what_arrived(
    sdk: openai.OpenAI, hostile: tuple[LiveServer, Engine], model: str, tag: str
) -> None:
    body = {"model": model, "messages": PROMPT, "stream": True, "store": True, "metadata": {"tag": tag}}
    lines = _sse_lines(hostile[0], body)
    assert all(line.startswith("data: ") for line in lines)
    *chunks, last = [orjson.loads(line[6:]) for line in lines]  # no `data: [DONE]` after the error, as OpenAI
    assert last["error"]["type"] == "server_error" and last["error"]["code"] == "bad_gateway"
    assert f"'{model}'" in last["error"]["message"]
    sent = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert sent == "The quick "

    stored = _poll_list(sdk, tag)
    assert [c.id for c in stored] == [chunks[0]["id"]]
    assert (stored[0].model_extra or {})["stillroom"]["incomplete"] is True
    assert stored[0].choices[0].message.content == sent

    with pytest.raises(openai.APIError) as info:  # the SDK raises the event, with the stream already begun
        _create(sdk, model, True, tag)
    assert not isinstance(info.value, openai.APIStatusError)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "bad_gateway"


def test_malformed_chunk_in_an_unstored_stream_is_an_error_event_too(hostile: tuple[LiveServer, Engine]) -> None:
    lines = _sse_lines(hostile[0], {"model": "bad-chunk", "messages": PROMPT, "stream": True})
    assert len(lines) == 4
    assert orjson.loads(lines[-1][6:])["error"]["code"] == "bad_gateway"


def test_azure_filter_results_are_kept_in_a_stored_stream(sdk: openai.OpenAI, tag: str) -> None:
    chunks = _create(sdk, "azure-filters", True, tag)
    stored = sdk.chat.completions.retrieve(chunks[-1].id)
    extra = stored.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert (stored.choices[0].model_extra or {})["content_filter_results"]["self_harm"]["severity"] == "safe"
    assert stored.model == "azure-filters" and stored.created > 0  # not the filter chunk's "" and 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stored_call_sends_and_records_a_seed_the_client_did_not_send(
    sdk: openai.OpenAI, stream: bool, tag: str
) -> None:
    answer = _create(sdk, "echo", stream, tag)
    if stream:
        completion_id = answer[0].id
        received = orjson.loads("".join(c.choices[0].delta.content or "" for c in answer if c.choices))
    else:
        completion_id = answer.id
        received = orjson.loads(answer.choices[0].message.content)
    stored = sdk.chat.completions.retrieve(completion_id)
    seed = (stored.model_extra or {})["seed"]
    assert isinstance(seed, int) and received["seed"] == seed
    assert "store" not in received and "metadata" not in received
    unstored = sdk.chat.completions.create(model="echo", messages=PROMPT)
    assert "seed" not in orjson.loads(unstored.choices[0].message.content or "")  # nothing is stored to reproduce


def test_stored_stream_asks_upstream_for_usage_and_hides_it_from_a_client_that_did_not(
    sdk: openai.OpenAI, hostile: tuple[LiveServer, Engine], tag: str
) -> None:
    body = {"model": "echo", "messages": PROMPT, "stream": True, "store": True, "metadata": {"tag": tag}}
    lines = _sse_lines(hostile[0], body)
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    received = orjson.loads("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks))
    assert received["stream_options"] == {"include_usage": True}
    stored = sdk.chat.completions.retrieve(chunks[0]["id"])
    assert stored.usage is not None and stored.usage.total_tokens == 37
    assert "stream_options" not in (stored.model_extra or {})  # what the client asked, not what Stillroom added


def test_list_model_filter_also_matches_the_model_the_stored_object_reports(client: openai.OpenAI, tag: str) -> None:
    answer = client.chat.completions.create(
        model="relay", messages=PROMPT, max_tokens=1, store=True, metadata={"tag": tag}
    )
    stored = client.chat.completions.retrieve(answer.id)
    assert stored.model == LOCAL_MODEL  # the name the upstream answered with, not the configured "relay"
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, model="relay")] == [answer.id]
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, model=LOCAL_MODEL)] == [answer.id]


@pytest.mark.parametrize("store", [False, True], ids=["unstored", "stored"])
def test_upstream_error_event_mid_stream_is_relayed_once_and_ends_the_stream(
    sdk: openai.OpenAI, hostile: tuple[LiveServer, Engine], store: bool, tag: str
) -> None:
    body = {"model": "fault-error-event", "messages": PROMPT, "stream": True, "store": store, "metadata": {"tag": tag}}
    lines = _sse_lines(hostile[0], body)
    events = [orjson.loads(line[6:]) for line in lines]
    assert [e for e in events if "error" in e] == [events[-1]]  # one error event, the last line: no [DONE]
    assert events[-1] == {"error": {"message": "the fake upstream failed mid-stream", "type": "server_error"}}
    if store:
        stored = _poll_list(sdk, tag)
        assert [c.id for c in stored] == [events[0]["id"]]
        assert (stored[0].model_extra or {})["stillroom"]["incomplete"] is True
        assert stored[0].choices[0].message.content == "The quick "

"""Upstream faults, through the real SDK: each one gets OpenAI's error, stores nothing (or, for a stream cut
mid-way, stores what arrived marked incomplete), and the gateway keeps serving everyone else.

The upstream is THE fake upstream (tests/fake_upstream.py): each gateway model below maps to one of its
fault names, so every failure here is a real one on a real socket.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import openai
import pytest
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from stillroom.store.db import make_engine
from tests.envelope import assert_openai_error
from tests.fake_upstream import ANSWER
from tests.live import FakeUpstream, LiveServer, fake_models_config, start_fake_upstream, start_server

FAULT_KEY = "sk-test-faults-0123456789"
MODEL_TIMEOUT = 0.5
PROMPT = [{"role": "user", "content": "Say something."}]
T = TypeVar("T")


# --- fixtures ---

FAULT_MODELS: dict[str, tuple[str, float | None]] = {
    "fake": ("fake", None),
    "slow": ("fault-slow", MODEL_TIMEOUT),
    "hang": ("fault-hang", MODEL_TIMEOUT),
    "error-500": ("fault-500", None),
    "rate-limited": ("fault-429", None),
    "reset": ("fault-reset", None),
    "cut": ("fault-cut", None),
}


@pytest.fixture(scope="module")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = start_fake_upstream(tmp_path_factory.mktemp("fake") / "fake_upstream.log")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("faults")
    live = start_server(
        tmp, db_url, config=fake_models_config(fake_upstream.url, FAULT_MODELS), api_key=FAULT_KEY, name="faults"
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def db(gateway: LiveServer) -> Iterator[Engine]:
    engine = make_engine(gateway.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sdk(gateway: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=FAULT_KEY, max_retries=0, timeout=30) as client:
        yield client


# --- helpers ---


def _poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 15) -> T:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = fetch()
    return value


def _barrier(sdk: openai.OpenAI) -> dict[str, int]:
    """Store one completion (acknowledged only once committed, and commits are FIFO): anything an earlier
    request had queued for storing is in the database by the time this returns. Returns the rows it adds."""
    unique = uuid.uuid4().hex
    sdk.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": f"barrier {unique}"}],
        store=True,
        metadata={"barrier": unique},
    )
    return {"completions": 1, "completion_metadata": 1, "message_contents": 1}


def _assert_nothing_stored(sdk: openai.OpenAI, db: Engine, before: dict[str, int], tag: str) -> None:
    added = _barrier(sdk)
    assert count_rows(db) == {table: before[table] + added[table] for table in before}
    assert sdk.chat.completions.list(metadata={"tag": tag}).data == []


def _create(sdk: openai.OpenAI, model: str, tag: str, stream: bool) -> Any:
    """One stored create; a stream is read to its end (an error before the first chunk raises at create)."""
    answer = sdk.chat.completions.create(model=model, messages=PROMPT, store=True, metadata={"tag": tag}, stream=stream)
    if stream:
        return list(answer)
    return answer


def _error_status(exc: openai.APIStatusError, status: int, type_: str, code: str | None) -> dict[str, Any]:
    error = assert_openai_error(exc.response, status, type_)
    assert error["code"] == code
    assert exc.status_code == status
    assert exc.request_id and exc.request_id.startswith("req_")
    return error


# --- the faults ---

STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


@STREAM
def test_slow_upstream_past_the_model_timeout_is_a_504(sdk: openai.OpenAI, db: Engine, tag: str, stream: bool) -> None:
    before = count_rows(db)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        _create(sdk, "slow", tag, stream)
    elapsed = time.monotonic() - started
    error = _error_status(info.value, 504, "server_error", "upstream_timeout")
    assert "timed out" in error["message"] and "'slow'" in error["message"]
    assert MODEL_TIMEOUT <= elapsed < 1.9, elapsed  # the model's timeout, not the fake's 2 s delay
    _assert_nothing_stored(sdk, db, before, tag)


@STREAM
def test_hanging_upstream_is_a_504_while_others_are_served(
    sdk: openai.OpenAI, db: Engine, tag: str, stream: bool
) -> None:
    before = count_rows(db)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        hung = pool.submit(_create, sdk, "hang", tag, stream)
        served: list[float] = []
        while not hung.done():  # the hanging request is in flight: others must not wait behind it
            t0 = time.monotonic()
            answer = sdk.chat.completions.create(model="fake", messages=PROMPT)
            served.append(time.monotonic() - t0)
            assert answer.choices[0].message.content == ANSWER
        with pytest.raises(openai.InternalServerError) as info:
            hung.result()
        elapsed = time.monotonic() - started
    error = _error_status(info.value, 504, "server_error", "upstream_timeout")
    assert "'hang'" in error["message"]
    assert MODEL_TIMEOUT <= elapsed < 5, elapsed
    assert len(served) >= 5, served
    assert max(served) < MODEL_TIMEOUT / 2, served
    _assert_nothing_stored(sdk, db, before, tag)


@STREAM
def test_upstream_500_is_relayed(sdk: openai.OpenAI, db: Engine, tag: str, stream: bool) -> None:
    before = count_rows(db)
    with pytest.raises(openai.InternalServerError) as info:
        _create(sdk, "error-500", tag, stream)
    error = _error_status(info.value, 500, "server_error", None)
    assert error["message"] == "the fake upstream failed"  # the upstream's own envelope, unchanged
    _assert_nothing_stored(sdk, db, before, tag)


@STREAM
def test_upstream_429_is_relayed_with_retry_after(sdk: openai.OpenAI, db: Engine, tag: str, stream: bool) -> None:
    before = count_rows(db)
    with pytest.raises(openai.RateLimitError) as info:
        _create(sdk, "rate-limited", tag, stream)
    error = _error_status(info.value, 429, "rate_limit_error", None)
    assert error["message"] == "slow down"
    assert info.value.response.headers["retry-after"] == "1"
    _assert_nothing_stored(sdk, db, before, tag)


@STREAM
def test_connection_reset_is_a_502(sdk: openai.OpenAI, db: Engine, tag: str, stream: bool) -> None:
    before = count_rows(db)
    with pytest.raises(openai.InternalServerError) as info:
        _create(sdk, "reset", tag, stream)
    error = _error_status(info.value, 502, "server_error", "bad_gateway")
    assert "'reset'" in error["message"]
    _assert_nothing_stored(sdk, db, before, tag)


def test_stream_cut_midway_ends_with_an_error_event_and_keeps_the_partial_answer(
    sdk: openai.OpenAI, db: Engine, tag: str
) -> None:
    before = count_rows(db)
    stream = sdk.chat.completions.create(model="cut", messages=PROMPT, store=True, metadata={"tag": tag}, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert not isinstance(info.value, openai.APIStatusError)  # the stream had begun: 200, then the error event
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "server_error" and info.value.body["code"] == "bad_gateway"
    assert "mid-stream" in info.value.message
    assert received, "some chunks arrive before the cut"
    ids = {c.id for c in received}
    assert len(ids) == 1
    partial = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert partial and ANSWER.startswith(partial) and partial != ANSWER

    page = _poll(lambda: sdk.chat.completions.list(metadata={"tag": tag}), lambda p: bool(p.data))
    assert [c.id for c in page.data] == [ids.pop()]
    stored = sdk.chat.completions.retrieve(page.data[0].id)
    extra = stored.model_extra or {}
    assert extra["stillroom"]["incomplete"] is True
    assert extra["stillroom"]["stream"] is True
    assert stored.choices[0].message.content == partial
    assert stored.choices[0].finish_reason is None
    assert stored.metadata == {"tag": tag}
    messages = sdk.chat.completions.messages.list(stored.id)
    assert [m.content for m in messages.data] == [PROMPT[0]["content"]]
    after = count_rows(db)
    assert after["completions"] == before["completions"] + 1


def test_stream_cut_midway_without_store_keeps_nothing(sdk: openai.OpenAI, db: Engine, tag: str) -> None:
    before = count_rows(db)
    stream = sdk.chat.completions.create(model="cut", messages=PROMPT, metadata={"tag": tag}, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "bad_gateway"
    assert received
    _assert_nothing_stored(sdk, db, before, tag)


def test_after_all_the_faults_the_gateway_still_stores_and_serves(
    sdk: openai.OpenAI, gateway: LiveServer, db: Engine, tag: str
) -> None:
    assert gateway.process.poll() is None
    plain = sdk.chat.completions.with_raw_response.create(
        model="fake", messages=PROMPT, store=True, metadata={"tag": tag, "kind": "plain"}
    )
    assert plain.headers["x-stillroom-stored"] == "true"
    streamed = list(
        sdk.chat.completions.create(
            model="fake", messages=PROMPT, store=True, metadata={"tag": tag, "kind": "stream"}, stream=True
        )
    )
    stream_id = streamed[0].id
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == " ".join(ANSWER.split()[:12]) + " "
    )

    stored = sdk.chat.completions.retrieve(plain.parse().id)
    assert stored.choices[0].message.content == ANSWER
    assert (stored.model_extra or {})["stillroom"]["incomplete"] is False
    page = sdk.chat.completions.list(metadata={"tag": tag}, order="asc")
    assert [c.id for c in page.data] == [stored.id, stream_id]
    assert all((c.model_extra or {})["stillroom"]["incomplete"] is False for c in page.data)

    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        health = http.get("/health")
    assert health.status_code == 200
    assert health.json()["store"]["failed"] == 0
    assert "unhandled error" not in gateway.log()

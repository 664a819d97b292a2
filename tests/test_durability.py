"""Nothing acknowledged is lost and nothing stored is missed: a SIGKILL right after responses arrive, storage
that fails (and comes back), and a consumer paging with `after` while a long stream is in flight."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from sqlalchemy import select, text

from stillroom.store.db import make_engine
from stillroom.store.tables import completions
from tests.conftest import LOCAL_MODEL, PG_ADMIN, NewDatabase
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream, LiveServer, fake_models_config, start_fake_upstream, start_server

FAKE_MODELS: dict[str, tuple[str, float | None]] = {"fake": ("fake", None), "hold": ("hold", None)}


def test_sigkill_loses_no_acknowledged_completion(db_url: str, new_database: NewDatabase, tmp_path: Path) -> None:
    url = new_database(db_url)  # a server without a key needs a database without project keys
    server = start_server(tmp_path, url, name="victim")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    tag = uuid.uuid4().hex
    acknowledged: list[str] = []

    def create(i: int) -> str:
        return client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=1,
            store=True,
            metadata={"tag": tag},
        ).id

    pool = ThreadPoolExecutor(8)
    futures = [pool.submit(create, i) for i in range(64)]
    for future in as_completed(futures):
        acknowledged.append(future.result())
        if len(acknowledged) == 40:
            server.kill()  # others are still in flight
            break
    pool.shutdown(wait=True, cancel_futures=True)
    client.close()

    engine = make_engine(url)
    with engine.connect() as conn:
        stored = set(conn.execute(select(completions.c.id).where(completions.c.id.in_(acknowledged))).scalars())
        if url.startswith("sqlite"):
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
    assert len(acknowledged) == 40
    assert stored == set(acknowledged)


def test_failed_store_still_answers_and_says_so(db_url: str, new_database: NewDatabase, tmp_path: Path) -> None:
    url = new_database(db_url)
    server = start_server(tmp_path, url, env={"STILLROOM_STORE_TIMEOUT": "5"}, name="fragile")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    body = {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "store": True}
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE completions RENAME TO completions_away"))
        raw = client.chat.completions.with_raw_response.create(**body)
        assert raw.headers["x-stillroom-stored"] == "false"
        assert raw.parse().choices[0].message.content is not None
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}) as stream:
            lines = list(stream.iter_lines())
        assert ": stillroom-stored false" in lines
        assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
        health = httpx.get(server.url + "/health").json()
        assert health["store"]["failed"] >= 2
        assert health["status"] == "degraded"
        assert httpx.get(server.url + "/health/ready").status_code == 503
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE completions_away RENAME TO completions"))
        engine.dispose()
    raw = client.chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-stillroom-stored"] == "true"
    assert client.chat.completions.retrieve(raw.parse().id).id == raw.parse().id
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert httpx.get(server.url + "/health/ready").status_code == 200
    client.close()
    server.stop()
    assert "storing completion" in server.log()


# --- a database that goes away mid-load ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = start_fake_upstream(tmp_path_factory.mktemp("fake") / "fake_upstream.log")
    yield fake
    fake.stop()


@pytest.fixture
def own_database(db_url: str, new_database: NewDatabase) -> str:
    """A database of the session's backend for one server that the test takes away."""
    return new_database(db_url)


class Outage:
    """Takes the database away from the server and brings it back. SQLite: another process holds the write
    lock (BEGIN EXCLUSIVE). PostgreSQL: the database refuses connections and its sessions are terminated."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock: sqlite3.Connection | None = None
        self.active = False

    def begin(self) -> None:
        self.active = True
        if self._url.startswith("sqlite"):
            self._lock = sqlite3.connect(self._url.removeprefix("sqlite:///"), isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")
            return
        name = self._url.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )

    def end(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None
            return
        name = self._url.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def _poll(check: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _running(server: LiveServer) -> Iterator[LiveServer]:
    try:
        yield server
    finally:
        server.stop()


def _status(server: LiveServer) -> tuple[str, int]:
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.status_code == 200  # liveness holds throughout
    return health.json()["status"], httpx.get(server.url + "/health/ready", timeout=10).status_code


def test_a_database_that_goes_away_mid_load_is_reported_and_storing_resumes(
    own_database: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = start_server(
        tmp_path,
        own_database,
        config=fake_models_config(fake_upstream.url, FAKE_MODELS),
        env={"STILLROOM_STORE_TIMEOUT": "1"},
        name="away",
    )
    outage = Outage(own_database)
    tag = uuid.uuid4().hex
    stored: dict[str, list[str]] = {"true": [], "false": []}
    answered: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30) as sdk:
            while not stop.is_set():
                raw = sdk.chat.completions.with_raw_response.create(
                    model="fake", messages=[{"role": "user", "content": "Hi"}], store=True, metadata={"tag": tag}
                )
                answered.append(raw.status_code)
                assert raw.parse().choices[0].message.content
                stored[raw.headers["x-stillroom-stored"]].append(raw.parse().id)

    with _running(server):
        clients = [threading.Thread(target=load) for _ in range(4)]
        try:
            for thread in clients:
                thread.start()
            assert _poll(lambda: len(stored["true"]) >= 20)
            assert _status(server) == ("ok", 200)
            outage.begin()
            assert _poll(lambda: _status(server) == ("degraded", 503)), server.log()
            failed_before = len(stored["false"])
            assert _poll(lambda: len(stored["false"]) >= failed_before + 8)  # still answered, marked not stored
            outage.end()
            assert _poll(lambda: _status(server) == ("ok", 200)), server.log()
            resumed = len(stored["true"])
            assert _poll(lambda: len(stored["true"]) >= resumed + 20)
        finally:
            stop.set()
            for thread in clients:
                thread.join(60)
            outage.end()
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
            assert set(answered) == {200}  # every request was answered, stored or not
            for cid in stored["true"][-20:]:  # and what was acknowledged after the outage is there
                assert sdk.chat.completions.retrieve(cid).id == cid
    log = server.log()
    assert log.count("storing completions failed") == 1  # logged once for the outage, then counted
    assert "storing resumed" in log


# --- cursors and streams ------------------------------------------------------------------------------------


def test_a_stream_that_ends_after_a_short_call_is_seen_by_a_consumer_paging_with_after(
    db_url: str, new_database: NewDatabase, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The stream's id is minted when it starts, before the short call's; it is committed when it ends,
    after. A consumer that already paged past the short call must still see the stream, and each once."""
    url = new_database(db_url)
    server = start_server(tmp_path, url, config=fake_models_config(fake_upstream.url, FAKE_MODELS), name="cursor")
    tag = uuid.uuid4().hex
    prompt = [{"role": "user", "content": "Tell me a long story."}]
    with (
        _running(server),
        openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30) as sdk,
    ):
        stream = sdk.chat.completions.create(
            model="hold", messages=prompt, stream=True, store=True, metadata={"tag": tag}, user=tag
        )
        chunks = iter(stream)
        stream_id = next(chunks).id
        short = sdk.chat.completions.create(model="fake", messages=prompt, store=True, metadata={"tag": tag})
        assert stream_id < short.id  # ids sort by when they were minted
        seen = [c.id for c in sdk.chat.completions.list(metadata={"tag": tag})]
        assert seen == [short.id]
        httpx.post(fake_upstream.url + "/chat/completions", json={"model": "release", "user": tag}).raise_for_status()
        rest = list(chunks)  # the stream ends once its completion is committed
        assert rest
        seen += [c.id for c in sdk.chat.completions.list(metadata={"tag": tag}, after=seen[-1])]
        assert seen == [short.id, stream_id]
        assert [c.id for c in sdk.chat.completions.list(metadata={"tag": tag}, order="desc")] == [stream_id, short.id]
        unknown = httpx.get(server.url + "/v1/chat/completions", params={"after": "chatcmpl-neverstored"})
        assert_openai_error(unknown, 400, "invalid_request_error", "after")

"""Nothing acknowledged is lost: a SIGKILL right after responses arrive, and storage that fails."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx
import openai
from sqlalchemy import select, text

from stillroom.store.db import make_engine
from stillroom.store.tables import completions
from tests.conftest import LOCAL_MODEL
from tests.live import start_server


def _unique_db(db_url: str, tmp_path: Path) -> str:
    """A fresh database for a server that this test kills or breaks."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'victim.db'}"
    return db_url  # the shared PostgreSQL test database; rows are told apart by a unique tag


def test_sigkill_loses_no_acknowledged_completion(db_url: str, tmp_path: Path) -> None:
    url = _unique_db(db_url, tmp_path)
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


def test_failed_store_still_answers_and_says_so(db_url: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broken.db'}" if db_url.startswith("sqlite") else db_url
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
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE completions_away RENAME TO completions"))
        engine.dispose()
    raw = client.chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-stillroom-stored"] == "true"
    assert client.chat.completions.retrieve(raw.parse().id).id == raw.parse().id
    client.close()
    server.stop()
    assert "storing completion" in server.log()

"""Quota: running totals exact to the byte, a full project still answered (not stored, with the reason),
room again after deletes; the storage switches and store-by-policy."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from stillroom.store.db import make_engine
from stillroom.store.tables import completions, message_contents, projects
from tests.admin import ADMIN, CHAT, bearer, fake_upstream, make_client, new_key, new_project, two_servers
from tests.live import FakeUpstream, LiveServer

__all__ = ["fake_upstream", "two_servers"]


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("quota"), fake_upstream, db_url) as c:
        yield c


def _kept(client: TestClient, project_id: str) -> int:
    return _scan(client.app.state.services.engine, project_id)  # type: ignore[attr-defined]


def _scan(engine: Engine, project_id: str) -> int:
    """What the project really keeps, counted the slow way."""
    with engine.connect() as conn:
        rows = conn.execute(select(func.sum(completions.c.stored_bytes)).where(completions.c.project_id == project_id))
        contents = conn.execute(
            select(func.sum(message_contents.c.size)).where(message_contents.c.project_id == project_id)
        )
        return int(rows.scalar() or 0) + int(contents.scalar() or 0)


def _usage(client: TestClient, project_id: str) -> int:
    usage: int = client.get(f"/v1/organization/projects/{project_id}", headers=ADMIN).json()["usage_bytes"]
    return usage


def test_a_full_project_is_answered_not_stored_and_has_room_again_after_deletes(client: TestClient) -> None:
    project_id = new_project(client, quota_bytes=4000)
    key = bearer(new_key(client, project_id, "contributor"))
    stored, refused = [], []
    for i in range(40):
        body = CHAT | {"store": True, "messages": [{"role": "user", "content": f"question {i} " + "x" * 100}]}
        response = client.post("/v1/chat/completions", json=body, headers=key)
        assert response.status_code == 200
        if response.headers["x-stillroom-stored"] == "true":
            stored.append(response.json()["id"])
        else:
            refused.append(response.headers["x-stillroom-stored-reason"])
    assert stored and refused and set(refused) == {"quota_exceeded"}
    assert _usage(client, project_id) == _kept(client, project_id) <= 4000
    for cid in stored[:3]:
        assert client.delete(f"/v1/chat/completions/{cid}", headers=key).status_code == 200
    assert _usage(client, project_id) == _kept(client, project_id)
    again = client.post("/v1/chat/completions", json=CHAT | {"store": True}, headers=key)
    assert again.headers["x-stillroom-stored"] == "true"
    assert _usage(client, project_id) == _kept(client, project_id) <= 4000


def test_a_project_with_storage_off_answers_without_storing(client: TestClient) -> None:
    project_id = new_project(client)
    key = bearer(new_key(client, project_id, "contributor"))
    client.post(f"/v1/organization/projects/{project_id}", json={"storage_enabled": False}, headers=ADMIN)
    response = client.post("/v1/chat/completions", json=CHAT | {"store": True}, headers=key)
    assert response.status_code == 200 and response.json()["choices"]
    assert response.headers["x-stillroom-stored"] == "false"
    assert response.headers["x-stillroom-stored-reason"] == "storage_disabled"
    assert client.get("/v1/chat/completions", headers=key).json()["data"] == []


def test_store_by_policy_stores_traffic_that_does_not_ask_with_default_metadata(client: TestClient) -> None:
    project_id = new_project(client)
    policy = {"mode": "all", "metadata": {"app": "legacy"}}
    client.post(f"/v1/organization/projects/{project_id}", json={"store_policy": policy}, headers=ADMIN)
    key = bearer(new_key(client, project_id, "contributor"))
    response = client.post("/v1/chat/completions", json=CHAT, headers=key)  # an old SDK: no `store`
    assert response.headers["x-stillroom-stored"] == "true"
    assert (
        client.post("/v1/chat/completions", json=CHAT | {"store": False}, headers=key).headers.get("x-stillroom-stored")
        is None
    )
    listed = client.get("/v1/chat/completions", headers=key).json()["data"]
    assert [(c["id"], c["metadata"]) for c in listed] == [(response.json()["id"], {"app": "legacy"})]


def test_server_wide_storage_off_cannot_be_overridden(
    db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with make_client(tmp_path_factory.mktemp("off"), fake_upstream, db_url, storage_enabled=False) as client:
        project_id = new_project(client)
        changed = client.post(f"/v1/organization/projects/{project_id}", json={"storage_enabled": True}, headers=ADMIN)
        assert changed.json()["storage_effective"] is False
        response = client.post(
            "/v1/chat/completions", json=CHAT | {"store": True}, headers=ADMIN | {"openai-project": project_id}
        )
        assert response.headers["x-stillroom-stored-reason"] == "storage_disabled"


def test_two_servers_writing_at_once_never_take_a_project_past_its_quota(
    two_servers: tuple[LiveServer, LiveServer],
) -> None:
    one, _ = two_servers
    made = httpx.post(one.url + "/v1/organization/projects", json={"name": "q", "quota_bytes": 5000}, headers=ADMIN)
    project_id = made.json()["id"]
    issued = httpx.post(
        f"{one.url}/v1/organization/projects/{project_id}/api_keys", json={"role": "contributor"}, headers=ADMIN
    )
    key = bearer(issued.json()["value"])
    deadline = time.monotonic() + 5  # the other server learns of the new key within a poll
    while httpx.get(two_servers[1].url + "/v1/chat/completions", headers=key).status_code != 200:
        assert time.monotonic() < deadline, "the other server never saw the key"
        time.sleep(0.02)
    tag = uuid.uuid4().hex

    def ask(i: int) -> tuple[str, str | None]:
        body = CHAT | {"store": True, "messages": [{"role": "user", "content": f"{tag} {i} " + "y" * 120}]}
        response = httpx.post(two_servers[i % 2].url + "/v1/chat/completions", json=body, headers=key, timeout=30)
        assert response.status_code == 200, response.text
        return response.headers["x-stillroom-stored"], response.headers.get("x-stillroom-stored-reason")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(48)))
    assert {stored for stored, _ in answers} == {"true", "false"}
    assert {reason for stored, reason in answers if stored == "false"} == {"quota_exceeded"}
    engine = make_engine(one.database_url)
    try:
        scanned = _scan(engine, project_id)
        with engine.connect() as conn:
            total = conn.execute(select(projects.c.used_bytes).where(projects.c.id == project_id)).scalar_one()
        assert total == scanned <= 5000
        assert scanned > 5000 - 1000  # it filled up: the refusals were for want of room, not by mistake
    finally:
        engine.dispose()
    deadline = time.monotonic() + 5  # each server's cached usage follows the running total
    for server in two_servers:
        while (shown := _usage_of(server, project_id)) != scanned and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shown == scanned


def _usage_of(server: LiveServer, project_id: str) -> int:
    usage: int = httpx.get(f"{server.url}/v1/organization/projects/{project_id}", headers=ADMIN).json()["usage_bytes"]
    return usage

"""Quota: running totals exact to the byte, a full project still answered (not stored, with the reason),
room again after deletes; the storage switches and store-by-policy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from stillroom.store.tables import completions, message_contents
from tests.admin import ADMIN, CHAT, bearer, fake_upstream, make_client, new_key, new_project
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("quota"), fake_upstream, db_url) as c:
        yield c


def _kept(client: TestClient, project_id: str) -> int:
    """What the project really keeps, counted the slow way."""
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
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

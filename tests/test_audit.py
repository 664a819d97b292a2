"""The audit log: who (key prefix, `server-key`) did which action on what, when, read back through the API and
`stillroom audit list`; reads of stored content audited when configured, not when off."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.admin import ADMIN, CHAT, bearer, fake_upstream, make_client, new_key, new_project
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("audit"), fake_upstream, db_url) as c:
        yield c


def _events(client: TestClient, project_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/organization/projects/{project_id}/audit_logs", headers=ADMIN, params={"limit": 100})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _work(client: TestClient, project_id: str) -> tuple[str, str, str]:
    """A contributor reads, updates and deletes a completion, a reader is refused a delete, the server key
    changes the project. Returns the contributor's and the reader's key prefixes and the completion id."""
    contributor, reader = new_key(client, project_id, "contributor"), new_key(client, project_id, "reader")
    made = client.post("/v1/chat/completions", json=CHAT | {"store": True}, headers=bearer(contributor))
    cid = made.json()["id"]
    assert client.get("/v1/chat/completions", headers=bearer(contributor)).status_code == 200
    assert client.get(f"/v1/chat/completions/{cid}", headers=bearer(contributor)).status_code == 200
    updated = client.post(f"/v1/chat/completions/{cid}", json={"metadata": {"k": "v"}}, headers=bearer(contributor))
    assert updated.status_code == 200
    assert client.delete(f"/v1/chat/completions/{cid}", headers=bearer(reader)).status_code == 403
    assert client.delete(f"/v1/chat/completions/{cid}", headers=bearer(contributor)).status_code == 200
    changed = client.post(f"/v1/organization/projects/{project_id}", json={"name": "renamed"}, headers=ADMIN)
    assert changed.status_code == 200
    return contributor[:12] + "...", reader[:12] + "...", cid


def _who_did_what(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    return [(e["actor"], e["action"], e["operation"], e["target"], e["outcome"]) for e in reversed(events)]


def test_actions_of_a_key_and_of_the_server_key_are_in_the_log_with_who_what_and_when(client: TestClient) -> None:
    started = int(time.time())
    project_id = new_project(client)
    contributor, reader, cid = _work(client, project_id)
    events = _events(client, project_id)
    path = f"/v1/chat/completions/{cid}"
    project = f"/v1/organization/projects/{project_id}"
    assert _who_did_what(events) == [  # oldest first; inference itself is not audited (it is stored, or not)
        ("server-key", "admin", "create_project_api_key", f"POST {project}/api_keys", "allowed"),
        ("server-key", "admin", "create_project_api_key", f"POST {project}/api_keys", "allowed"),
        (contributor, "stored-completions/read", "list_chat_completions", "GET /v1/chat/completions", "allowed"),
        (contributor, "stored-completions/read", "get_chat_completion", f"GET {path}", "allowed"),
        (contributor, "stored-completions/action", "update_chat_completion", f"POST {path}", "allowed"),
        (reader, "stored-completions/action", "delete_chat_completion", f"DELETE {path}", "denied"),
        (contributor, "stored-completions/action", "delete_chat_completion", f"DELETE {path}", "allowed"),
        ("server-key", "admin", "modify_project", f"POST {project}", "allowed"),
        ("server-key", "admin", "list_audit_logs", f"GET {project}/audit_logs", "allowed"),  # this very read
    ]
    assert all(started <= e["effective_at"] <= time.time() and e["project_id"] == project_id for e in events)
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)  # newest first


def test_stillroom_audit_list_shows_the_same_events(client: TestClient) -> None:
    project_id = new_project(client)
    contributor, reader, _cid = _work(client, project_id)
    expected = _events(client, project_id)  # also flushes what this process holds in memory
    url = str(client.app.state.services.settings.database_url)  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")} | {"COLUMNS": "400"}
    shown = subprocess.run(
        [sys.executable, "-m", "stillroom", "audit", "list", "--project", project_id, "--database-url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if "/v1/" in line]
    assert len(lines) == len(expected)
    for line, event in zip(lines, expected, strict=True):  # newest first, like the API
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        assert cells[1:] == [event["actor"], event["action"], event["operation"], event["target"], event["outcome"]]
        assert cells[0] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["effective_at"]))
    assert any(contributor in line and "delete_chat_completion" in line for line in lines)
    assert any(reader in line and "denied" in line for line in lines)


def test_reads_are_not_audited_when_audit_reads_is_off(
    db_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    with make_client(tmp_path, fake_upstream, db_url, audit_reads=False) as quiet:
        project_id = new_project(quiet)
        _work(quiet, project_id)
        operations = [e["operation"] for e in reversed(_events(quiet, project_id))]
    assert operations == [
        "create_project_api_key",
        "create_project_api_key",
        "update_chat_completion",
        "delete_chat_completion",
        "delete_chat_completion",
        "modify_project",
        "list_audit_logs",
    ]

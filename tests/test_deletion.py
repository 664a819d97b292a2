"""Deleting a project leaves nothing of it in any table; bulk delete by filter and its dry run; the
retention sweep with a frozen clock, also by two sweeper processes at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from stillroom.retention import DAY, sweep_retention
from stillroom.store.tables import completions, message_contents, metadata, projects
from tests.admin import ADMIN, CHAT, bearer, fake_upstream, make_client, new_key, new_project
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("deletion")
    with make_client(tmp, fake_upstream, db_url, files_dir=tmp / "files") as c:
        yield c


def _store(client: TestClient, key: dict[str, str], n: int, **meta: str) -> list[str]:
    ids = []
    for i in range(n):
        body = CHAT | {"store": True, "metadata": meta, "messages": [{"role": "user", "content": f"m{i}"}]}
        response = client.post("/v1/chat/completions", json=body, headers=key)
        assert response.headers["x-stillroom-stored"] == "true"
        ids.append(response.json()["id"])
    return ids


def _rows_of(client: TestClient, project_id: str) -> dict[str, int]:
    """Every table: rows carrying the project id in any column (a scan, whatever the column is called)."""
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    found = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for column in table.c:
                if column.type.python_type is str:
                    n = conn.execute(select(func.count()).select_from(table).where(column == project_id)).scalar()
                    if n:
                        found[f"{table.name}.{column.name}"] = int(n)
    return found


def test_deleting_a_project_leaves_nothing_of_it_in_any_table(client: TestClient) -> None:
    project_id = new_project(client)
    key = bearer(new_key(client, project_id, "admin"))
    _store(client, key, 3, user="u1")
    client.get("/v1/chat/completions", headers=key)  # an audited read
    client.app.state.services.audit.flush()  # type: ignore[attr-defined]
    assert {"completions.project_id", "api_keys.project_id", "projects.id"} <= set(_rows_of(client, project_id))
    deleted = client.delete(f"/v1/organization/projects/{project_id}", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["rows"]["completions"] == 3
    assert _rows_of(client, project_id) == {}
    assert client.get("/v1/chat/completions", headers=key).status_code == 401  # its keys went with it


_TRAINING = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n' * 10


def _upload(client: TestClient, key: dict[str, str]) -> Path:
    """A file in the project; the path of its bytes in the file storage."""
    made = client.post("/v1/files", headers=key, files={"file": ("t.jsonl", _TRAINING)}, data={"purpose": "fine-tune"})
    assert made.status_code == 200, made.text
    storage = client.app.state.services.storage  # type: ignore[attr-defined]
    path: Path = storage.local_path(made.json()["id"])
    assert path.read_bytes() == _TRAINING
    return path


def test_deleting_a_project_frees_its_files_bytes_and_no_one_elses(client: TestClient) -> None:
    project_id, other = new_project(client), new_project(client)
    key, other_key = bearer(new_key(client, project_id, "admin")), bearer(new_key(client, other, "admin"))
    blobs = [_upload(client, key), _upload(client, key)]
    kept = _upload(client, other_key)
    deleted = client.delete(f"/v1/organization/projects/{project_id}", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["rows"]["files"] == 2 and deleted.json()["files"] == 2
    assert [path.exists() for path in blobs] == [False, False]
    assert _rows_of(client, project_id) == {}
    assert kept.read_bytes() == _TRAINING
    assert len(client.get("/v1/files", headers=other_key).json()["data"]) == 1


def test_stillroom_projects_delete_frees_the_files_in_stillroom_files_dir(client: TestClient) -> None:
    project_id = new_project(client)
    blob = _upload(client, bearer(new_key(client, project_id, "admin")))
    # The CLI is another process: what this server's audit log still holds in memory (the key's creation,
    # the upload) would be written after the delete, so it goes in first, as the background flush would.
    client.app.state.services.audit.flush()  # type: ignore[attr-defined]
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    env["STILLROOM_FILES_DIR"] = str(settings.files_dir)
    command = [sys.executable, "-m", "stillroom", "projects", "delete", project_id, "--yes"]
    done = subprocess.run(
        [*command, "--database-url", str(settings.database_url)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("rows; files freed: 1")
    assert not blob.exists()
    assert _rows_of(client, project_id) == {}


def test_bulk_delete_by_metadata_with_a_dry_run_first(client: TestClient) -> None:
    project_id = new_project(client)
    key = bearer(new_key(client, project_id, "contributor"))
    erase = _store(client, key, 3, user="erase-me")
    keep = _store(client, key, 2, user="keep-me")
    path = f"/v1/organization/projects/{project_id}/chat_completions/delete"
    dry = client.post(path, json={"metadata": {"user": "erase-me"}, "dry_run": True}, headers=key).json()
    assert (dry["matched"], dry["deleted"]) == (3, 0)
    assert len(client.get("/v1/chat/completions", headers=key).json()["data"]) == 5
    done = client.post(path, json={"metadata": {"user": "erase-me"}}, headers=key).json()
    assert done["deleted"] == 3
    left = [c["id"] for c in client.get("/v1/chat/completions", headers=key).json()["data"]]
    assert left == keep and not set(erase) & set(left)
    # A deleted id still works as a cursor: its place in the commit order is kept (a tombstone).
    after = client.get("/v1/chat/completions", params={"after": erase[1], "order": "asc"}, headers=key)
    assert after.status_code == 200
    assert [c["id"] for c in after.json()["data"]] == keep


def test_retention_sweep_with_a_frozen_clock(client: TestClient) -> None:
    project_id = new_project(client)
    key = bearer(new_key(client, project_id, "contributor"))
    ids = _store(client, key, 3)
    client.post(f"/v1/organization/projects/{project_id}", json={"retention_days": 30}, headers=ADMIN)
    services = client.app.state.services  # type: ignore[attr-defined]
    now = time.time()
    assert sweep_retention(services.engine, services.writes, now + 29 * DAY, batch_size=2) == 0
    assert len(client.get("/v1/chat/completions", headers=key).json()["data"]) == 3
    swept = sweep_retention(services.engine, services.writes, now + 31 * DAY, batch_size=2)
    assert swept >= 3  # other tests' projects have no retention, so only these (bounded batches of 2)
    assert client.get("/v1/chat/completions", headers=key).json()["data"] == []
    assert all(client.get(f"/v1/chat/completions/{cid}", headers=key).status_code == 404 for cid in ids)
    for cid in ids:  # swept ids still work as cursors
        after = client.get("/v1/chat/completions", params={"after": cid}, headers=key)
        assert (after.status_code, after.json()["data"]) == (200, [])
    usage = client.get(f"/v1/organization/projects/{project_id}", headers=ADMIN).json()["usage_bytes"]
    assert usage == 0


_SWEEPER = """
import pathlib, sys, time
from stillroom.retention import sweep_retention
from stillroom.store.db import make_engine
from stillroom.store.projects import direct_writes
url, now, ready, go = sys.argv[1], float(sys.argv[2]), pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
engine = make_engine(url)
ready.touch()
while not go.exists():
    time.sleep(0.005)
print(sweep_retention(engine, direct_writes(engine), now, batch_size=2))
"""


def test_two_sweeper_processes_at_once_free_each_completion_once(client: TestClient, tmp_path: Path) -> None:
    project_id = new_project(client)
    key = bearer(new_key(client, project_id, "contributor"))
    shared = {"role": "system", "content": "A system prompt every completion shares (content-addressed once)."}

    def store(n: int, label: str) -> list[str]:
        ids = []
        for i in range(n):
            messages = [shared, {"role": "user", "content": f"{label} {i}"}]
            response = client.post(
                "/v1/chat/completions", json=CHAT | {"store": True, "messages": messages}, headers=key
            )
            assert response.headers["x-stillroom-stored"] == "true"
            ids.append(response.json()["id"])
        return ids

    old = store(30, "old")
    cutoff = time.time()
    kept = store(4, "new")
    client.post(f"/v1/organization/projects/{project_id}", json={"retention_days": 30}, headers=ADMIN)
    url = str(client.app.state.services.settings.database_url)  # type: ignore[attr-defined]
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    sweepers = [
        subprocess.Popen(
            [sys.executable, "-c", _SWEEPER, url, str(cutoff + 30 * DAY), str(ready[i]), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready):  # both connected: start them together
        assert time.monotonic() < deadline and all(s.poll() is None for s in sweepers)
        time.sleep(0.01)
    go.touch()
    outputs = [s.communicate(timeout=120) for s in sweepers]
    assert [s.returncode for s in sweepers] == [0, 0], outputs
    assert sum(int(out) for out, _ in outputs) >= len(old)  # other projects with retention may lose rows too
    listed = client.get("/v1/chat/completions", headers=key, params={"limit": 100}).json()["data"]
    assert sorted(c["id"] for c in listed) == sorted(kept)
    for cid in kept:  # the shared system prompt is still there for those kept
        messages = client.get(f"/v1/chat/completions/{cid}/messages", headers=key).json()["data"]
        assert [m["content"] for m in messages][:1] == [shared["content"]]
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        used = conn.execute(select(projects.c.used_bytes).where(projects.c.id == project_id)).scalar_one()
        rows = conn.execute(select(func.sum(completions.c.stored_bytes)).where(completions.c.project_id == project_id))
        contents = conn.execute(
            select(func.sum(message_contents.c.size), func.sum(message_contents.c.refs)).where(
                message_contents.c.project_id == project_id
            )
        ).one()
    assert used == int(rows.scalar() or 0) + int(contents[0] or 0) > 0
    assert int(contents[1]) == 2 * len(kept)  # each kept completion: the shared prompt and its own question


def test_stillroom_completions_delete_by_search_counts_then_deletes(client: TestClient) -> None:
    project_id = new_project(client)
    key = bearer(new_key(client, project_id, "contributor"))
    for text in ("refund my order", "refund again", "where is my parcel"):
        body = CHAT | {"store": True, "messages": [{"role": "user", "content": text}]}
        assert client.post("/v1/chat/completions", json=body, headers=key).headers["x-stillroom-stored"] == "true"
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    command = [sys.executable, "-m", "stillroom", "completions", "delete", "--project", project_id]
    command += ["--search", "refund"]
    url = ["--database-url", str(settings.database_url)]
    dry = subprocess.run([*command, "--dry-run", *url], capture_output=True, text=True, env=env, timeout=60)
    assert (dry.returncode, dry.stdout.strip()) == (0, "would delete 2"), dry.stderr
    done = subprocess.run([*command, *url], capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "deleted 2"), done.stderr
    left = client.get("/v1/chat/completions", headers=key).json()["data"]
    assert len(left) == 1

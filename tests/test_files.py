"""File bytes against the project's quota: uploads, result files and datasets move `used_bytes`, deletes give
it back, and a file that does not fit is refused with nothing kept (both databases)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine

from stillroom import files
from stillroom.errors import QuotaExceededError
from stillroom.store import files as file_store
from stillroom.store.blobs import LocalFileStorage
from stillroom.store.projects import create_project, direct_writes, get_project
from tests.jobs_db import migrated


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = migrated(db_url)
    yield eng
    eng.dispose()


def _project(engine: Engine, quota: int) -> str:
    project_id = f"p-{uuid.uuid4().hex[:12]}"
    direct_writes(engine)(lambda conn: create_project(conn, project_id, project_id, int(time.time()), quota))
    return project_id


def _used(engine: Engine, project_id: str) -> int:
    row = get_project(engine, project_id)
    assert row is not None
    return row.used_bytes


def _jsonl(n: int) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    ]
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _upload(engine: Engine, storage: LocalFileStorage, project_id: str, data: bytes) -> str:
    pending = files.Upload(storage, "fine-tune", "train.jsonl", 1 << 20)
    pending.write(data)
    return pending.finish(direct_writes(engine), project_id).id


def test_uploads_and_deletes_move_the_projects_running_total(engine: Engine, tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path)
    project_id = _project(engine, quota=1 << 20)
    data = _jsonl(10)
    first = _upload(engine, storage, project_id, data)
    _upload(engine, storage, project_id, data)
    assert _used(engine, project_id) == 2 * len(data)
    files.delete_file(direct_writes(engine), storage, project_id, first)
    assert _used(engine, project_id) == len(data)


def test_a_file_past_the_quota_is_refused_and_nothing_is_kept(engine: Engine, tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path)
    data = _jsonl(10)
    project_id = _project(engine, quota=len(data) + 10)
    _upload(engine, storage, project_id, data)
    rows_before, blobs_before = file_store.count_files(engine), sorted(tmp_path.rglob("*"))
    with pytest.raises(QuotaExceededError) as raised:
        _upload(engine, storage, project_id, data)
    assert "quota" in raised.value.message and raised.value.param == "file"
    source = tmp_path.parent / "result.csv"
    source.write_bytes(data)
    with pytest.raises(QuotaExceededError):
        files.register_result_file(direct_writes(engine), storage, project_id, source, "result.csv")
    assert file_store.count_files(engine) == rows_before and sorted(tmp_path.rglob("*")) == blobs_before
    assert _used(engine, project_id) == len(data)

"""The writer thread: how a batch fails (once, on a database that cannot write; record by record only on
bad data), health while writes fail and its recovery, and the generic write entry point."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import DBAPIError, OperationalError

from stillroom.store.completions import delete_completion, get_completion, save_completions
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.store.tables import completion_tombstones
from stillroom.store.writer import CommitQueue
from tests.conftest import PG_ADMIN
from tests.store.test_completions import record

WAIT = 30.0


def poll(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def fresh_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the session's backend (no tables: every write fails as on a broken database)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"stillroom_writer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class CountingEngine:
    """Counts the batches the writer attempts, and holds it inside the first until `open()`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.dialect = engine.dialect
        self.attempts = 0
        self.entered = threading.Event()
        self._gate = threading.Event()

    def raw_connection(self) -> Any:
        self.attempts += 1
        self.entered.set()
        assert self._gate.wait(WAIT), "gate never opened"
        return self._engine.raw_connection()

    def connect(self) -> Connection:
        return self._engine.connect()

    def open(self) -> None:
        self._gate.set()


def test_a_database_that_cannot_write_fails_the_batch_once_and_recovers(
    fresh_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(fresh_url)
    counting = CountingEngine(engine)
    queue = CommitQueue(counting, batch_size=64)  # type: ignore[arg-type]
    project = f"p-{uuid.uuid4().hex}"
    try:
        held = queue.submit(record(project))
        assert counting.entered.wait(WAIT)
        waiting = [queue.submit(record(project)) for _ in range(20)]
        with caplog.at_level(logging.ERROR, logger="stillroom.store"):
            counting.open()
            for future in [held, *waiting]:
                with pytest.raises(DBAPIError):  # no such table: not one record's fault
                    future.result(WAIT)
        # The held batch, then the 20 that queued meanwhile in one attempt: not one more per record.
        assert counting.attempts == 2
        assert queue.failed == 21 and queue.committed == 0
        assert queue.is_degraded()
        assert queue.health()["last_error"]
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1  # logged once, then counted

        upgrade_database(engine)  # the database is back; nothing is being stored
        assert poll(lambda: not queue.is_degraded())  # the idle writer's probe noticed
        assert queue.health()["failing_for_s"] is None
        ok = record(project)
        assert queue.submit(ok).result(WAIT) is None
        assert get_completion(engine, project, ok.id) is not None
    finally:
        counting.open()
        queue.close()
        engine.dispose()


def test_a_write_function_runs_in_its_own_transaction_on_the_writer(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_database(engine)
    queue = CommitQueue(engine)
    project = f"p-{uuid.uuid4().hex}"
    kept = record(project)
    save_completions(engine, [kept])
    threads: list[str] = []

    def delete_then_refuse(conn: Connection) -> None:
        threads.append(threading.current_thread().name)
        delete_completion(conn, project, kept.id)
        raise ValueError("refused after the delete")

    async def main() -> None:
        with pytest.raises(ValueError, match="refused"):
            await queue.write(delete_then_refuse)
        assert get_completion(engine, project, kept.id) is not None  # rolled back
        assert await queue.write(lambda conn: delete_completion(conn, project, kept.id)) is True

    try:
        asyncio.run(main())
        assert threads == ["stillroom-writer"]
        assert get_completion(engine, project, kept.id) is None
        with engine.connect() as conn:
            assert conn.execute(select(completion_tombstones.c.id).where(completion_tombstones.c.id == kept.id)).all()
        assert not queue.is_degraded()  # a function's own error is not a failing database
        duplicate = queue.submit_write(
            lambda conn: conn.execute(insert(completion_tombstones).values(id=kept.id, project_id=project, seq=1))
        )
        with pytest.raises(DBAPIError):
            duplicate.result(WAIT)
        assert not queue.is_degraded()  # nor is an integrity error
    finally:
        queue.close()
        engine.dispose()


def test_a_sqlite_lock_held_by_another_process_degrades_then_recovers(tmp_path: Path) -> None:
    """SQLite only: its write lock is a file lock another process (here: another connection) can hold. A
    write stuck behind it longer than `stall_after` is reported; past the lock timeout it fails; once the
    lock is released, health recovers and storing resumes."""
    path = tmp_path / "locked.db"
    engine = make_engine(f"sqlite:///{path}", lock_timeout=1.0)
    upgrade_database(engine)
    queue = CommitQueue(engine, stall_after=0.05)
    project = f"p-{uuid.uuid4().hex}"
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        stuck = queue.submit(record(project))
        assert poll(queue.is_degraded)  # stuck past stall_after
        with pytest.raises(OperationalError, match="locked"):
            stuck.result(WAIT)
        assert queue.is_degraded()
        blocker.execute("ROLLBACK")
        assert poll(lambda: not queue.is_degraded())
        ok = record(project)
        assert queue.submit(ok).result(WAIT) is None
        assert get_completion(engine, project, ok.id) is not None
    finally:
        blocker.close()
        queue.close()
        engine.dispose()


def test_what_one_loop_iteration_hands_over_is_committed_as_one_batch(db_url: str) -> None:
    """Commits started in the same event-loop iteration reach the writer in one hand-over (one wake-up),
    so they share one transaction; the loop learns every outcome."""
    engine = make_engine(db_url)
    upgrade_database(engine)
    queue = CommitQueue(engine, batch_size=64)
    project = f"p-{uuid.uuid4().hex}"
    records = [record(project) for _ in range(20)]

    async def main() -> None:
        await asyncio.gather(*(queue.commit(r, WAIT) for r in records))

    try:
        asyncio.run(main())
        assert queue.batches == 1 and queue.committed == 20
        assert all(get_completion(engine, project, r.id) is not None for r in records)
    finally:
        queue.close()
        engine.dispose()


def test_close_writes_what_a_loop_handed_over_in_an_iteration_that_has_not_ended(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_database(engine)
    queue = CommitQueue(engine)
    project = f"p-{uuid.uuid4().hex}"
    kept = record(project)

    async def main() -> None:
        queue.enqueue(kept)  # handed over, not yet put: the iteration is still running
        queue.close(WAIT)

    try:
        asyncio.run(main())
        assert get_completion(engine, project, kept.id) is not None
    finally:
        engine.dispose()

"""Engines for SQLite (WAL, foreign keys) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy import Engine as Engine  # re-exported for the domain, which never imports SQLAlchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3; everything else is passed to SQLAlchemy as given."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(
    url: str, *, sqlite_synchronous: str = "NORMAL", pool_size: int = 8, lock_timeout: float = 30.0
) -> Engine:
    """`lock_timeout`: SQLite's busy timeout, the longest a write waits for another process's write lock (the
    server passes its store timeout: nobody waits for a commit longer than that). PostgreSQL connections
    give up connecting after 10 s, so a database that went away fails a write rather than hanging it."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, connect_args={"connect_timeout": 10}
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    busy_ms = max(1, int(lock_timeout * 1000))
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, connect_args={"timeout": lock_timeout})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below decide
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        # No checkpoint inside a commit (it would hold up every completion waiting on that commit): the
        # writer runs passive checkpoints on a thread of their own instead (checkpoint_wal).
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("write") else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE), so two
    processes never deadlock upgrading a read lock."""
    with engine.connect() as conn:
        conn.info["write"] = True
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info.pop("write", None)


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """One consistent snapshot for several statements: REPEATABLE READ on PostgreSQL (READ COMMITTED would
    let each statement see a different set of commits); on SQLite a deferred transaction, whose first read
    fixes the snapshot (WAL)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


@contextmanager
def raw_write_transaction(engine: Engine, connection: Any = None) -> Iterator[Any]:
    """A DBAPI cursor in one write transaction, on a pooled connection: for hot paths where SQLAlchemy's
    statement handling would cost more than the database's own work. Raises SQLAlchemy's exception classes
    (IntegrityError, OperationalError...), as the rest of the store does; a connection the database dropped
    is discarded, not returned to the pool. `connection`: one the caller holds (`engine.raw_connection()`)
    and keeps, instead of a checkout for this transaction alone."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    held = connection is not None
    if connection is None:
        connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            if engine.dialect.name == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            connection.commit()
        except dbapi_error as exc:
            if engine.dialect.is_disconnect(exc, connection.dbapi_connection, cursor):
                connection.invalidate(exc)
            else:
                with contextlib.suppress(dbapi_error):
                    connection.rollback()
            raise DBAPIError.instance(None, None, exc, dbapi_error) from exc
        except BaseException:
            with contextlib.suppress(dbapi_error):
                connection.rollback()
            raise
        cursor.close()
    finally:
        if not held:
            connection.close()


def checkpoint_wal(engine: Engine, connection: Any = None) -> tuple[int, int]:
    """Copy SQLite's write-ahead log back into the database without blocking writers (PASSIVE). Returns
    the log's length in frames when the copy began, and how many of them are now copied back ((0, 0) on
    PostgreSQL). `connection`: a DBAPI connection the caller holds (outside any transaction), else one is
    checked out."""
    if engine.dialect.name != "sqlite":
        return 0, 0
    if connection is None:
        with engine.connect() as conn:
            row = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    else:
        cursor = connection.cursor()
        try:
            row = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            cursor.close()
    return (int(row[1]), int(row[2])) if row is not None else (0, 0)

"""Saving stored completions: the group commit's batch, written in one transaction on the writer thread
(stillroom.store.writer), numbered in commit order from the `sequences` row (whose row lock the batch
holds until it commits, so the batches of several processes are numbered in the order they commit),
admitted against each project's quota, indexed for search (on SQLite usually by a later step:
stillroom.store.search_tail) and stamped with the commit clock."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine

from stillroom.store import search, search_tail
from stillroom.store.db import raw_write_transaction
from stillroom.store.projects import Admission, admit_rows, settle_usage
from stillroom.store.timeline import id_micros


@dataclass(slots=True)
class CompletionRecord:
    """A completion to keep. Hashing and serialising happen on the writer thread, off the event loop: the
    caller hands it over and does not touch it again."""

    id: str
    project_id: str
    model: str
    provider: str
    request: dict[str, Any]  # parameters without messages and metadata
    response: dict[str, Any]
    messages: list[dict[str, Any]]
    metadata: dict[str, str]
    request_id: str
    stream: bool
    incomplete: bool
    latency_ms: float


_COMPLETION_COLUMNS = (
    "id",
    "project_id",
    "model",
    "response_model",
    "created",
    "provider",
    "request",
    "response",
    "message_digests",
    "metadata",
    "request_id",
    "stream",
    "incomplete",
    "latency_ms",
    "stored_bytes",
    "clock",
    "seq",
)
# The group commit is the hot write path, so it runs plain SQL through a DBAPI connection (the writer's
# own): SQLAlchemy Core statement handling costs more than SQLite's commit itself (0.33 ms vs 0.07 ms a
# batch). Contents and metadata go in as multi-row statements: on SQLite every row of an executemany is a
# step of its own, and every step lets go of the GIL, which the event loop then holds for up to a switch
# interval while the commit waits.
_SEQUENCE_SQL = (
    # First: take the batch's sequence numbers. The row lock is held to the commit (see the module doc).
    # It also reads the commit clock and lag (stillroom.store.timeline), which _CLOCK_SQL moves on.
    "INSERT INTO sequences (name, value) VALUES ('completions', {p}) "
    "ON CONFLICT (name) DO UPDATE SET value = sequences.value + excluded.value RETURNING value, clock, lag"
)
_CLOCK_SQL = "UPDATE sequences SET clock = {p}, lag = {p} WHERE name = 'completions'"
_CONTENTS_SQL = (
    # refs comes back as the batch's own count exactly when the row is new (a kept one had at least 1).
    "INSERT INTO message_contents (project_id, digest, body, size, refs) VALUES {rows} "
    "ON CONFLICT (project_id, digest) DO UPDATE SET refs = message_contents.refs + excluded.refs "
    "RETURNING project_id, digest, refs"
)
_COMPLETIONS_SQL = (
    f"INSERT INTO completions ({', '.join(_COMPLETION_COLUMNS)}) "
    f"VALUES ({', '.join(['{p}'] * len(_COMPLETION_COLUMNS))})"
)
_METADATA_SQL = "INSERT INTO completion_metadata (completion_id, project_id, key, value, seq) VALUES {rows}"
_MULTI_ROW_MAX = 256  # rows per multi-row statement; 5 columns each, far below both databases' limits
_INT64 = range(-(2**63), 2**63)


def save_completions(
    engine: Engine,
    records: Sequence[CompletionRecord],
    connection: Any = None,
    *,
    documents: dict[int, str] | None = None,
) -> set[str]:
    """Write a batch of completions in one transaction (the group commit), numbered in batch order after
    everything committed before it. Returns the ids of those left out because they would take their
    project past its quota (store/projects.py admit_rows; the others' bytes are added to its usage).
    `connection`: a DBAPI connection the caller holds (the writer's own), else one is checked out.
    `documents` (SQLite): leave the search index to a later step (stillroom.store.search_tail) and add
    each stored completion's document to this dict by seq; without it the batch is indexed at once."""
    content_rows, rows, meta_rows = serialise_completions(records)
    texts = {r.id: search.document_text(r.messages, r.response) for r in records}
    sqlite = engine.dialect.name == "sqlite"
    p = _placeholder(engine)
    with raw_write_transaction(engine, connection) as cursor:
        cursor.execute(_SEQUENCE_SQL.format(p=p), (len(rows),))
        value, clock, lag = cursor.fetchone()
        first = int(value) - len(rows) + 1
        cursor.execute(_CLOCK_SQL.format(p=p), _stamp_clock(rows, int(clock), int(lag)))
        for row in rows:
            row[-1] += first
        for meta in meta_rows:
            meta[-1] += first
        # After the sequence lock, never before: every batch takes the locks in the same order.
        admission = _admit(cursor, engine, content_rows, rows)
        if admission.refused:
            content_rows, rows, meta_rows = _without(admission.refused, content_rows, rows, meta_rows)
        inserted: dict[tuple[str, str], int] = {}
        for chunk in _chunks(content_rows):
            cursor.execute(_CONTENTS_SQL.format(rows=_values(p, 5, len(chunk))), [v for row in chunk for v in row])
            ours = {(row[0], row[1]): row for row in chunk}
            for project_id, digest, refs in cursor.fetchall():
                row = ours[(project_id, digest)]
                if int(refs) == row[4]:
                    inserted[(project_id, digest)] = row[3]
        if admission.pending:
            settle_usage(cursor, p, admission.pending, inserted)
        cursor.executemany(_COMPLETIONS_SQL.format(p=p), rows)
        for chunk in _chunks(meta_rows):
            cursor.execute(_METADATA_SQL.format(rows=_values(p, 5, len(chunk))), [v for row in chunk for v in row])
        indexed = {row[-1]: texts[row[0]] for row in rows}
        if not sqlite:
            search.index_rows(cursor.execute, engine.dialect.name, list(indexed.items()))
        elif documents is None:
            search_tail.index_pending(cursor, indexed)
    if sqlite and documents is not None:
        documents.update(indexed)
    return admission.refused


_CLOCK = _COMPLETION_COLUMNS.index("clock")


def _stamp_clock(rows: Rows, clock: int, lag: int) -> tuple[int, int]:
    """Give each row of the batch, in order, the commit clock: the largest id time so far. Returns the new
    (clock, lag) of the sequence (stillroom.store.timeline)."""
    for row in rows:
        minted = id_micros(row[0])
        clock = max(clock, minted)
        lag = max(lag, clock - minted)
        row[_CLOCK] = clock
    return clock, lag


def _chunks(rows: list[list[Any]]) -> Iterator[list[list[Any]]]:
    """`rows` in pieces of a power of two (largest first, at most _MULTI_ROW_MAX): a handful of distinct SQL
    texts for the drivers' statement caches, whatever the batch size."""
    start = 0
    while start < len(rows):
        size = min(_MULTI_ROW_MAX, 1 << ((len(rows) - start).bit_length() - 1))
        yield rows[start : start + size]
        start += size


@functools.cache
def _values(placeholder: str, columns: int, count: int) -> str:
    row = "(" + ", ".join([placeholder] * columns) + ")"
    return ", ".join([row] * count)


def _placeholder(engine: Engine) -> str:
    return "?" if engine.dialect.paramstyle == "qmark" else "%s"


Rows = list[list[Any]]
_DIGESTS = _COMPLETION_COLUMNS.index("message_digests")
_BYTES = _COMPLETION_COLUMNS.index("stored_bytes")


def _admit(cursor: Any, engine: Engine, content_rows: Rows, rows: Rows) -> Admission:
    admitted = [(row[0], row[1], int(row[_BYTES]), orjson.loads(row[_DIGESTS])) for row in rows]
    sizes = {(c[0], c[1]): int(c[3]) for c in content_rows}
    postgres = engine.dialect.name == "postgresql"
    return admit_rows(cursor, _placeholder(engine), postgres, admitted, sizes, int(time.time()))


def _without(refused: set[str], content_rows: Rows, rows: Rows, meta_rows: Rows) -> tuple[Rows, Rows, Rows]:
    """The batch's rows less the refused completions (and the message references only they made)."""
    drop: dict[tuple[str, str], int] = {}
    for row in rows:
        if row[0] in refused:
            for digest in orjson.loads(row[_DIGESTS]):
                drop[(row[1], digest)] = drop.get((row[1], digest), 0) + 1
    contents = []
    for content in content_rows:
        refs = content[4] - drop.get((content[0], content[1]), 0)
        if refs > 0:
            contents.append([*content[:4], refs])
    return contents, [r for r in rows if r[0] not in refused], [m for m in meta_rows if m[0] not in refused]


def serialise_completions(records: Sequence[CompletionRecord]) -> tuple[Rows, Rows, Rows]:
    """The rows a batch writes: message contents (deduplicated, with ref counts), completions, metadata.
    A completion row and its metadata rows end with the record's position in the batch, which
    `save_completions` turns into its sequence number once it holds the sequence."""
    contents: dict[tuple[str, str], list[Any]] = {}
    rows: Rows = []
    meta_rows: Rows = []
    for position, record in enumerate(records):
        digests = []
        for message in record.messages:
            body = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
            digest = hashlib.sha256(body).hexdigest()
            digests.append(digest)
            slot = contents.get((record.project_id, digest))
            if slot is None:
                contents[(record.project_id, digest)] = [body, 1]
            else:
                slot[1] += 1
        request = orjson.dumps(record.request)
        response = orjson.dumps(record.response)
        metadata = orjson.dumps(record.metadata)
        digest_list = orjson.dumps(digests)
        rows.append(
            [
                record.id,
                record.project_id,
                record.model,
                _response_model(record.response.get("model")),
                _created(record.response.get("created")),
                record.provider,
                request.decode(),
                response.decode(),
                digest_list.decode(),
                metadata.decode(),
                record.request_id,
                record.stream,
                record.incomplete,
                record.latency_ms,
                len(request) + len(response) + len(metadata) + len(digest_list),
                0,  # the commit clock, set once the batch holds the sequence
                position,
            ]
        )
        meta_rows.extend([record.id, record.project_id, k, v, position] for k, v in record.metadata.items())
    content_rows = [
        [project, digest, body.decode(), len(body), refs]
        for (project, digest), (body, refs) in sorted(contents.items())
    ]
    return content_rows, rows, meta_rows


def _response_model(value: Any) -> str:
    """The stored object's own model name, as `list(model=...)` matches it ("" when it has none)."""
    return value[:256] if isinstance(value, str) else ""


def _created(value: Any) -> int:
    """The upstream's `created` as it was sent (seconds, or milliseconds from some upstreams); 0 when it is
    missing or not a 64-bit integer. The stored response keeps the original either way."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in _INT64:
        return value
    return 0

"""Stored completions: save (batched), list with metadata/model filters and keyset pages, get, update,
delete. Input messages are stored once per project by content address and freed when unreferenced.

Lists page on the commit sequence (`seq`), not on the id: a stream's id is minted when it starts but its
row is committed when it ends, so id order would put it behind a cursor that had already passed it. Every
batch takes the next numbers from the `sequences` row, whose row lock it holds until it commits, so
numbers are handed out in commit order, across processes too (PostgreSQL), and a reader always sees a
gap-free prefix. `after=<id>` resumes at that id's number; a deleted row's number is kept in
`completion_tombstones` so that its id still works as a cursor.

Writes take a Connection in a write transaction (the writer thread opens it, stillroom.store.writer);
reads open their own snapshot (one transaction, REPEATABLE READ on PostgreSQL)."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)

from stillroom.errors import QuotaExceededError
from stillroom.store import search
from stillroom.store.db import raw_write_transaction, read_transaction
from stillroom.store.projects import Admission, add_usage, admit_rows, lock_usage, settle_usage
from stillroom.store.search import Words
from stillroom.store.tables import (
    completion_metadata,
    completion_tombstones,
    completions,
    message_contents,
    sequences,
)
from stillroom.store.timeline import id_micros, seq_range
from stillroom.wire.ids import completion_id_floor


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


@dataclass(slots=True)
class StoredCompletion:
    id: str
    model: str
    provider: str
    request: dict[str, Any]
    response: dict[str, Any]
    metadata: dict[str, str]
    request_id: str
    stream: bool
    incomplete: bool
    latency_ms: float
    message_digests: list[str] = field(default_factory=list)
    seq: int = 0  # place in the commit sequence: the list order


class CursorNotFoundError(LookupError):
    """`after` names no completion of the project, stored or deleted."""


_COLUMNS = (
    completions.c.id,
    completions.c.model,
    completions.c.provider,
    completions.c.request,
    completions.c.response,
    completions.c.metadata,
    completions.c.request_id,
    completions.c.stream,
    completions.c.incomplete,
    completions.c.latency_ms,
    completions.c.message_digests,
    completions.c.seq,
)


def _row_to_stored(row: Any) -> StoredCompletion:
    return StoredCompletion(
        id=row.id,
        model=row.model,
        provider=row.provider,
        request=orjson.loads(row.request),
        response=orjson.loads(row.response),
        metadata=orjson.loads(row.metadata),
        request_id=row.request_id,
        stream=row.stream,
        incomplete=row.incomplete,
        latency_ms=row.latency_ms,
        message_digests=orjson.loads(row.message_digests),
        seq=row.seq,
    )


# --- save (the group commit) -----------------------------------------------------------------------

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


def save_completions(engine: Engine, records: Sequence[CompletionRecord], connection: Any = None) -> set[str]:
    """Write a batch of completions in one transaction (the group commit), numbered in batch order after
    everything committed before it. Returns the ids of those left out because they would take their
    project past its quota (store/projects.py admit_rows; the others' bytes are added to its usage).
    `connection`: a DBAPI connection the caller holds (the writer's own), else one is checked out."""
    content_rows, rows, meta_rows = serialise_completions(records)
    documents = {r.id: search.document_text(r.messages, r.response) for r in records}
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
        search.index_rows(cursor.execute, engine.dialect.name, [(row[-1], documents[row[0]]) for row in rows])
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


# --- list ----------------------------------------------------------------------------------------------


def list_completions(
    engine: Engine,
    project_id: str,
    *,
    metadata: dict[str, str],
    model: str | None,
    after: str | None,
    limit: int,
    descending: bool,
    search: Words | None = None,
    created_after: int | None = None,
    created_before: int | None = None,
) -> tuple[list[StoredCompletion], bool]:
    """One keyset page in commit order, and whether more follow. `after` is an id (the previous page's
    last); CursorNotFoundError when the project never had it. `search`: words that must occur (store.search);
    `created_after`/`created_before`: creation times in µs, [after, before)."""
    with read_transaction(engine) as conn:
        after_seq = None if after is None else _cursor_seq(conn, project_id, after)
        narrowing = narrow(conn, project_id, search, created_after, created_before)
        if narrowing is None:
            return [], False
        return _page(conn, project_id, metadata, model, after_seq, limit, descending, narrowing)


def list_completions_with_messages(
    engine: Engine,
    project_id: str,
    *,
    metadata: dict[str, str],
    model: str | None,
    after_seq: int | None,
    limit: int,
) -> tuple[list[StoredCompletion], dict[str, dict[str, Any]], bool]:
    """An ascending page of complete completions after `after_seq`, with the bodies of their messages, read
    in one snapshot (a delete committed meanwhile cannot take a body from under a listed row). Also
    returns whether more follow; the next page starts after the last row's `seq`."""
    with read_transaction(engine) as conn:
        rows, has_more = _page(conn, project_id, metadata, model, after_seq, limit, False)
        digests = {d for row in rows if not row.incomplete for d in row.message_digests}
        return rows, _message_bodies(conn, project_id, digests), has_more


def _page(
    conn: Connection,
    project_id: str,
    metadata: dict[str, str],
    model: str | None,
    after_seq: int | None,
    limit: int,
    descending: bool,
    narrowing: Narrowing | None = None,
) -> tuple[list[StoredCompletion], bool]:
    pairs = _rarest_first(conn, project_id, metadata) if len(metadata) > 1 else list(metadata.items())
    if pairs is None:
        return [], False
    if narrowing is not None and narrowing.search is not None and pairs and conn.dialect.name == "sqlite":
        narrowing = replace(narrowing, search_drives=_is_search_rarer(conn, project_id, pairs[0], narrowing.search))
    stmt = list_statement(
        project_id,
        metadata=pairs,
        model=model,
        after_seq=after_seq,
        limit=limit + 1,
        descending=descending,
        narrowing=narrowing,
        dialect=conn.dialect.name,
    )
    rows = conn.execute(stmt).all()
    return [_row_to_stored(r) for r in rows[:limit]], len(rows) > limit


def _cursor_seq(conn: Connection, project_id: str, completion_id: str) -> int:
    c, t = completions.c, completion_tombstones.c
    found = conn.execute(
        union_all(
            select(c.seq).where(c.project_id == project_id, c.id == completion_id),
            select(t.seq).where(t.project_id == project_id, t.id == completion_id),
        )
    ).scalar()
    if found is None:
        raise CursorNotFoundError(completion_id)
    return int(found)


_SELECTIVITY_PROBE = 1000


def _is_search_rarer(conn: Connection, project_id: str, pair: tuple[str, str], words: Words) -> bool:
    """Whether fewer completions match the search than carry the pair (each counted up to a cap)."""
    m = completion_metadata.c
    found, condition = search.matching_seqs(conn.dialect.name, words)
    hits = select(found).select_from(search.search_table).where(condition).limit(_SELECTIVITY_PROBE).subquery()
    carried = (
        select(m.seq)
        .where(m.project_id == project_id, m.key == pair[0], m.value == pair[1])
        .limit(_SELECTIVITY_PROBE)
        .subquery()
    )
    n_hits = conn.execute(select(func.count()).select_from(hits)).scalar() or 0
    n_carried = conn.execute(select(func.count()).select_from(carried)).scalar() or 0
    return n_hits <= n_carried


def _rarest_first(conn: Connection, project_id: str, metadata: dict[str, str]) -> list[tuple[str, str]] | None:
    """Order filter pairs by how many completions carry each (counted up to a cap, on the index), so the
    rarest pair drives the query. None when some pair matches nothing at all."""
    m = completion_metadata.c
    counts = {}
    for pair in metadata.items():
        sample = (
            select(m.seq)
            .where(m.project_id == project_id, m.key == pair[0], m.value == pair[1])
            .limit(_SELECTIVITY_PROBE)
            .subquery()
        )
        counts[pair] = conn.execute(select(func.count()).select_from(sample)).scalar() or 0
    if min(counts.values()) == 0:
        return None
    return sorted(counts, key=lambda pair: counts[pair])


def list_statement(
    project_id: str,
    *,
    metadata: list[tuple[str, str]],
    model: str | None,
    after_seq: int | None,
    limit: int,
    descending: bool,
    narrowing: Narrowing | None = None,
    dialect: str = "sqlite",
) -> Select[Any]:
    """The list query (public so that tests can EXPLAIN it). The first metadata pair drives it; without one,
    a model filter does (`_either_model`). `model` matches the configured name or the stored object's own.
    A search joins the index (on SQLite its rowid order drives the walk: FTS5 hands back rows in rowid =
    seq order); a time range bounds whichever key drives (`Narrowing`)."""
    narrowing = narrowing or Narrowing()
    if model is not None and not metadata and narrowing.search is None:
        return _either_model(
            project_id, model, after_seq=after_seq, limit=limit, descending=descending, narrowing=narrowing
        )
    c = completions
    stmt = select(*_COLUMNS).where(c.c.project_id == project_id)
    key: Any = c.c.seq  # the seq column that drives the walk
    pairs = metadata
    # SQLite: the search index drives the walk (in its rowid = seq order) unless a metadata pair is rarer
    # (Narrowing.search_drives); then each pair row probes the index for its seq. PostgreSQL's planner
    # chooses between the GIN index and the list order itself.
    search_drives = narrowing.search is not None and (dialect != "sqlite" or not pairs or narrowing.search_drives)
    if narrowing.search is not None and search_drives:
        found, condition = search.matching_seqs(dialect, narrowing.search)
        stmt = stmt.join(search.search_table, found == c.c.seq).where(condition)
        if dialect == "sqlite":
            key = found
    if pairs and dialect == "sqlite" and narrowing.search is not None and search_drives:
        for i, (k, v) in enumerate(pairs):
            m = completion_metadata.alias(f"m{i}")
            stmt = stmt.where(
                exists().where(m.c.project_id == project_id, m.c.key == k, m.c.value == v, m.c.seq == key)
            )
    elif pairs:
        # The first pair drives the query through its (project, key, value, seq) index, in list order.
        first = completion_metadata.alias("m0")
        k0, v0 = pairs[0]
        stmt = stmt.join(first, first.c.completion_id == c.c.id).where(
            first.c.project_id == project_id, first.c.key == k0, first.c.value == v0
        )
        key = first.c.seq
        if narrowing.search is not None and not search_drives:
            found, condition = search.matching_seqs(dialect, narrowing.search)
            probe = select(literal(1)).select_from(search.search_table).where(found == key, condition)
            stmt = stmt.where(probe.exists())
        for i, (k, v) in enumerate(pairs[1:], start=1):
            m = completion_metadata.alias(f"m{i}")
            # A point probe of the same index: a completion's seq is unique, so (project, key, value, seq)
            # finds its pair or nothing.
            stmt = stmt.where(
                exists().where(m.c.project_id == project_id, m.c.key == k, m.c.value == v, m.c.seq == first.c.seq)
            )
    if model is not None:
        stmt = stmt.where(or_(c.c.model == model, c.c.response_model == model))
    if after_seq is not None:
        stmt = stmt.where(key < after_seq if descending else key > after_seq)
    stmt = narrowing.bound(stmt, key)
    return stmt.order_by(key.desc() if descending else key.asc()).limit(limit)


def _either_model(
    project_id: str,
    model: str,
    *,
    after_seq: int | None,
    limit: int,
    descending: bool,
    narrowing: Narrowing | None = None,
) -> Select[Any]:
    """A page of the completions whose configured or own model is `model`: one walk of each name's
    (project, name, seq) index, each cut at `limit`, merged in list order (the second leaves out what the
    first finds, so nothing comes twice)."""
    c = completions.c

    def walk(*where: Any) -> Select[Any]:
        stmt = select(*_COLUMNS).where(c.project_id == project_id, *where)
        if after_seq is not None:
            stmt = stmt.where(c.seq < after_seq if descending else c.seq > after_seq)
        if narrowing is not None:
            stmt = narrowing.bound(stmt, c.seq)
        page = stmt.order_by(c.seq.desc() if descending else c.seq.asc()).limit(limit).subquery()
        return select(*page.c)

    both = union_all(walk(c.model == model), walk(c.response_model == model, c.model != model)).subquery()
    return select(*both.c).order_by(both.c.seq.desc() if descending else both.c.seq.asc()).limit(limit)


_S = TypeVar("_S", bound=Select[Any])


@dataclass(frozen=True, slots=True)
class Narrowing:
    """Stillroom's own list filters: the words of a search (store.search), and a creation-time range as an
    id range [id_from, id_to) with the seq range [first_seq, stop_seq) that holds it (store.timeline)."""

    search: Words | None = None
    id_from: str | None = None
    id_to: str | None = None
    first_seq: int | None = None
    stop_seq: int | None = None
    search_drives: bool = True  # SQLite, with metadata pairs too: whether the search is the rarer (_page)

    def bound(self, stmt: _S, key: Any) -> _S:
        """`stmt` walking `key` (a seq) only over the seq range, keeping the ids in the range."""
        c = completions.c
        if self.first_seq is not None:
            stmt = stmt.where(key >= self.first_seq)
        if self.stop_seq is not None:
            stmt = stmt.where(key < self.stop_seq)
        if self.id_from is not None:
            stmt = stmt.where(c.id >= self.id_from)
        if self.id_to is not None:
            stmt = stmt.where(c.id < self.id_to)
        return stmt


def narrow(
    conn: Connection, project_id: str, words: Words | None, after_us: int | None, before_us: int | None
) -> Narrowing | None:
    """The Narrowing of a search and a time range (µs); None when no completion can be in the range."""
    if after_us is None and before_us is None:
        return Narrowing(words)
    span = seq_range(conn, project_id, after_us, before_us)
    if span is None:
        return None
    return Narrowing(
        words,
        None if after_us is None else completion_id_floor(after_us),
        None if before_us is None else completion_id_floor(before_us),
        span.first,
        span.stop,
    )


# --- get -----------------------------------------------------------------------------------------------


def get_completion(engine: Engine, project_id: str, completion_id: str) -> StoredCompletion | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_COLUMNS).where(completions.c.project_id == project_id, completions.c.id == completion_id)
        ).first()
    return _row_to_stored(row) if row else None


def get_messages(engine: Engine, project_id: str, completion_id: str) -> list[dict[str, Any]] | None:
    """The input messages of a completion, in order; None when there is no such completion. The digests
    and the bodies come from one snapshot, so a concurrent delete means "none", never half an answer."""
    with read_transaction(engine) as conn:
        digests_json = conn.execute(
            select(completions.c.message_digests).where(
                completions.c.project_id == project_id, completions.c.id == completion_id
            )
        ).scalar()
        if digests_json is None:
            return None
        digests = orjson.loads(digests_json)
        bodies = _message_bodies(conn, project_id, set(digests))
    return [bodies[d] for d in digests]


def _message_bodies(conn: Connection, project_id: str, digests: set[str]) -> dict[str, dict[str, Any]]:
    """Messages by content address (one query per 512)."""
    mc = message_contents.c
    wanted = sorted(digests)
    bodies: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        # Pad to a power of two: a handful of distinct SQL texts instead of one per list length, so the
        # drivers' statement caches stay small on long exports.
        chunk += chunk[-1:] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
        rows = conn.execute(select(mc.digest, mc.body).where(mc.project_id == project_id, mc.digest.in_(chunk)))
        bodies.update((digest, orjson.loads(body)) for digest, body in rows)
    return bodies


_IN_CHUNK = 512


# --- update, delete (run by the writer, in its write transaction) ------------------------------------


def update_metadata(
    conn: Connection,
    project_id: str,
    completion_id: str,
    merge: Callable[[dict[str, str]], dict[str, str]],
) -> StoredCompletion | None:
    """Replace a completion's metadata with `merge(current)` (merge may raise: the caller's transaction
    then rolls back). The completion keeps its place in the list order."""
    usage = lock_usage(conn, project_id)
    stmt = select(*_COLUMNS).where(completions.c.project_id == project_id, completions.c.id == completion_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        return None
    stored = _row_to_stored(row)
    old_json = row.metadata
    stored.metadata = merge(stored.metadata)
    new_json = orjson.dumps(stored.metadata).decode()
    grown = len(new_json.encode()) - len(old_json.encode())
    if usage is not None and grown > 0 and usage[0] + grown > usage[1]:
        raise QuotaExceededError("This project's stored data is at its quota: the metadata cannot grow.")
    if usage is not None:
        add_usage(conn, project_id, grown)
    conn.execute(
        update(completions)
        .where(completions.c.id == completion_id)
        .values(
            metadata=new_json,
            stored_bytes=completions.c.stored_bytes + len(new_json.encode()) - len(old_json.encode()),
        )
    )
    conn.execute(delete(completion_metadata).where(completion_metadata.c.completion_id == completion_id))
    if stored.metadata:
        conn.execute(
            insert(completion_metadata),
            [
                {"completion_id": completion_id, "project_id": project_id, "key": k, "value": v, "seq": stored.seq}
                for k, v in stored.metadata.items()
            ],
        )
    return stored


def delete_completion(conn: Connection, project_id: str, completion_id: str) -> bool:
    """Delete a completion and release its message contents; False when there was none. Its sequence
    number stays behind as a tombstone, so `after=<its id>` still resumes where it was. The project's usage
    goes down by the bytes freed (its row locked first, as every write of a project's bytes does)."""
    lock_usage(conn, project_id)
    deleted = conn.execute(
        delete(completions)
        .where(completions.c.project_id == project_id, completions.c.id == completion_id)
        .returning(completions.c.message_digests, completions.c.seq, completions.c.stored_bytes, completions.c.response)
    ).first()
    if deleted is None:
        return False
    search.unindex_completions(conn, project_id, [(deleted.seq, deleted.response, deleted.message_digests)])
    conn.execute(insert(completion_tombstones).values(id=completion_id, project_id=project_id, seq=deleted.seq))
    conn.execute(delete(completion_metadata).where(completion_metadata.c.completion_id == completion_id))
    counts: dict[str, int] = {}
    for digest in orjson.loads(deleted.message_digests):
        counts[digest] = counts.get(digest, 0) + 1
    mc = message_contents.c
    for digest, n in sorted(counts.items()):
        conn.execute(
            update(message_contents).where(mc.project_id == project_id, mc.digest == digest).values(refs=mc.refs - n)
        )
    freed = conn.execute(
        delete(message_contents)
        .where(and_(mc.project_id == project_id, mc.digest.in_(list(counts)), mc.refs <= 0))
        .returning(mc.size)
    ).scalars()
    add_usage(conn, project_id, -(int(deleted.stored_bytes) + sum(int(size) for size in freed)))
    return True


def probe_writes(conn: Connection) -> None:
    """Touch every table a save writes, changing nothing: whether the writer could commit right now."""
    for table in (sequences, completions, completion_metadata, message_contents):
        conn.execute(select(literal(1)).select_from(table).limit(0)).all()


# --- accounting ----------------------------------------------------------------------------------------


def storage_usage(engine: Engine) -> dict[str, int]:
    """Bytes actually kept per project: completion rows plus the (shared) message contents."""
    usage: dict[str, int] = {}
    with read_transaction(engine) as conn:
        for project, total in conn.execute(
            select(completions.c.project_id, func.sum(completions.c.stored_bytes)).group_by(completions.c.project_id)
        ):
            usage[project] = usage.get(project, 0) + int(total or 0)
        for project, total in conn.execute(
            select(message_contents.c.project_id, func.sum(message_contents.c.size)).group_by(
                message_contents.c.project_id
            )
        ):
            usage[project] = usage.get(project, 0) + int(total or 0)
    return usage


def count_rows(engine: Engine) -> dict[str, int]:
    """Row counts of every stored table (what error-path tests check did not change)."""
    with read_transaction(engine) as conn:
        return {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
            for table in (completions, completion_metadata, message_contents)
        }

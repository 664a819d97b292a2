"""List pages of stored completions: keyset pages in commit order, filtered by metadata pairs, a model name
(the configured one or the stored object's own), a full-text search and a creation-time range.

Lists page on the commit sequence (`seq`), not on the id: a stream's id is minted when it starts but its
row is committed when it ends, so id order would put it behind a cursor that had already passed it.
Numbers are handed out in commit order, across processes too (PostgreSQL, store/group_commit.py), so a
reader always sees a gap-free prefix. `after=<id>` resumes at that id's number, a deleted one's too (its
tombstone). Each page is read in one snapshot (one transaction, REPEATABLE READ on PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    exists,
    func,
    literal,
    or_,
    select,
    union_all,
)

from stillroom.store import search
from stillroom.store.db import read_transaction
from stillroom.store.search import Words
from stillroom.store.tables import (
    completion_metadata,
    completion_tombstones,
    completions,
    message_contents,
    other_model,
)
from stillroom.store.timeline import seq_range
from stillroom.wire.ids import completion_id_floor


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


COLUMNS = (
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


def row_to_stored(row: Any) -> StoredCompletion:
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


def message_bodies(conn: Connection, project_id: str, digests: set[str]) -> dict[str, dict[str, Any]]:
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


class CursorNotFoundError(LookupError):
    """`after` names no completion of the project, stored or deleted."""


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
    search: Words | None = None,
    created_after: int | None = None,
    created_before: int | None = None,
) -> tuple[list[StoredCompletion], dict[str, dict[str, Any]], bool]:
    """An ascending page of complete completions after `after_seq`, with the bodies of their messages, read
    in one snapshot (a delete committed meanwhile cannot take a body from under a listed row). Also
    returns whether more follow; the next page starts after the last row's `seq`. The filters are the
    list's (`list_completions`)."""
    with read_transaction(engine) as conn:
        narrowing = narrow(conn, project_id, search, created_after, created_before)
        if narrowing is None:
            return [], {}, False
        rows, has_more = _page(conn, project_id, metadata, model, after_seq, limit, False, narrowing)
        digests = {d for row in rows if not row.incomplete for d in row.message_digests}
        return rows, message_bodies(conn, project_id, digests), has_more


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
    return [row_to_stored(r) for r in rows[:limit]], len(rows) > limit


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
    stmt = select(*COLUMNS).where(c.c.project_id == project_id)
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
    (project, name, seq) index, each cut at `limit`, merged in list order. The second walks the own name
    only where it differs from the configured one (`other_model`, migration 0009), which leaves out what the
    first finds (so nothing comes twice), and for a model that reports its own name finds nothing at once
    instead of reading every row of that model."""
    c = completions.c

    def walk(*where: Any) -> Select[Any]:
        stmt = select(*COLUMNS).where(c.project_id == project_id, *where)
        if after_seq is not None:
            stmt = stmt.where(c.seq < after_seq if descending else c.seq > after_seq)
        if narrowing is not None:
            stmt = narrowing.bound(stmt, c.seq)
        page = stmt.order_by(c.seq.desc() if descending else c.seq.asc()).limit(limit).subquery()
        return select(*page.c)

    both = union_all(walk(c.model == model), walk(other_model == model)).subquery()
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

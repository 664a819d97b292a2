"""Full-text search over stored completions: one document per completion (the text of its turn's input
messages and of its answer, `document_text`) in an index that the write transaction storing or deleting
the completion keeps in step.

- SQLite: `completion_search`, an FTS5 **contentless** table (`content=''`: the text is not stored twice),
  rowid = the completion's `seq` (stable, unlike SQLite's implicit rowid, which VACUUM and table rebuilds
  renumber). FTS5 hands rows back in rowid order, so a search walks in list order and stops after a page.
  A contentless row is removed with FTS5's `'delete'` command, which needs the document that was indexed:
  the delete paths rebuild it from the rows they delete (`unindex_completions`) before freeing them. So
  `document_text` must never change without a migration that rebuilds the index.
- PostgreSQL: `completion_search(seq → completions.seq ON DELETE CASCADE, document tsvector)` with a GIN
  index; deletes need nothing here (the cascade), and the planner chooses between the GIN index (rare
  words) and walking the list order with the match as a filter (common words).

Both backends index the same terms: `search_terms` folds case and accents and splits on anything that is
not a letter or a digit, in Python, and the database only sees the space-joined terms (FTS5 `unicode61`,
PostgreSQL's `simple` configuration, which keep such words as they are). Semantics: whole words, every word
of the query must occur (AND), a word with several terms (`don't`, `gpt-4.1`) is a phrase, and a trailing
`*` makes a word's last term a prefix. Text in scripts without spaces (CJK) is one term per run.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, column, select, table, text
from sqlalchemy.sql.elements import ColumnClause, ColumnElement, TextClause

from stillroom.store.tables import message_contents

MAX_TERM = 64  # longer "words" (base64, hashes) are not indexed
MAX_DOCUMENT = 100_000  # characters of a document; PostgreSQL's tsvector holds at most 1 MB
MAX_QUERY_WORDS = 16
_WORD = re.compile(r"[^\W_]+")
# SQLite: every completion with seq at or below this value is indexed, none above (stillroom.store.search_tail).
WATERMARK_SQL = "SELECT value FROM sequences WHERE name = 'search'"

search_table = table("completion_search", column("rowid"), column("seq"), column("document"))

SQLITE_DDL = (
    "CREATE VIRTUAL TABLE completion_search USING fts5("
    "document, content='', columnsize=0, tokenize='unicode61 remove_diacritics 0')"
)
POSTGRES_DDL = (
    "CREATE TABLE completion_search ("
    "seq BIGINT PRIMARY KEY REFERENCES completions (seq) ON DELETE CASCADE, document TSVECTOR NOT NULL)",
    "CREATE INDEX ix_completion_search_document ON completion_search USING gin (document)",
)
# What the migration creates, by backend: the tables a schema comparison must leave out.
SEARCH_TABLES = {
    "sqlite": {"completion_search", "completion_search_data", "completion_search_idx", "completion_search_config"},
    "postgresql": {"completion_search"},
}


class SearchQueryError(ValueError):
    """The search text holds no word to look for, or too many."""


# --- documents -----------------------------------------------------------------------------------


def search_terms(value: str) -> list[str]:
    """Lowercased, accent-free words of `value` (letters and digits; anything else separates)."""
    if not value.isascii():
        folded = unicodedata.normalize("NFKD", value.casefold())
        value = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [t for t in _WORD.findall(value.lower()) if len(t) <= MAX_TERM]


def document_text(messages: Sequence[dict[str, Any]], response: dict[str, Any]) -> str:
    """What a completion is found by, as space-separated terms: the text (content, text parts, tool calls'
    names and arguments) of its turn's input, the messages after the last assistant message except system
    and developer ones, and of its answer's choices. Earlier turns are the input and answer of the
    completions that answered them, and system prompts repeat across thousands of completions: indexing
    them with every completion would grow the index with the square of a conversation's length."""
    start = max((n + 1 for n, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
    parts: list[str] = []
    for message in messages[start:]:
        if message.get("role") not in ("system", "developer"):
            _message_text(message, parts)
    for choice in response.get("choices") or []:
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            _message_text(choice["message"], parts)
    return " ".join(search_terms(" ".join(parts)[:MAX_DOCUMENT]))


def _message_text(message: dict[str, Any], parts: list[str]) -> None:
    for key in ("content", "refusal", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.extend(v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))


# --- queries -------------------------------------------------------------------------------------

Words = tuple[tuple[tuple[str, ...], bool], ...]  # per word: its terms, and whether the last is a prefix


def parse_search(query: str) -> Words:
    """The words of a search; SearchQueryError when none is left (only punctuation) or there are too many."""
    words = []
    for raw in query.split():
        terms = tuple(search_terms(raw))
        if terms:
            words.append((terms, raw.endswith("*")))
    if not words:
        raise SearchQueryError("Invalid 'search': give at least one word (letters or digits).")
    if len(words) > MAX_QUERY_WORDS:
        raise SearchQueryError(f"Invalid 'search': at most {MAX_QUERY_WORDS} words.")
    return tuple(words)


def fts5_query(words: Words) -> str:
    """FTS5 syntax: each word a quoted phrase (`*` after it for a prefix), all of them AND-ed."""
    return " AND ".join(f'"{" ".join(terms)}"' + (" *" if prefix else "") for terms, prefix in words)


def tsquery(words: Words) -> str:
    """to_tsquery syntax: each word's terms joined by <-> (followed by), the last one `:*` for a prefix."""
    out = []
    for terms, prefix in words:
        quoted = [f"'{t}'" for t in terms]
        if prefix:
            quoted[-1] += ":*"
        out.append("(" + " <-> ".join(quoted) + ")")
    return " & ".join(out)


def matching_seqs(dialect: str, words: Words) -> tuple[ColumnClause[Any], ColumnElement[Any] | TextClause]:
    """(the search table's seq column, the match condition) for a list statement to join on."""
    if dialect == "sqlite":
        match = text("completion_search MATCH :search_query").bindparams(search_query=fts5_query(words))
        return search_table.c.rowid, match
    query = text("to_tsquery('simple', :search_query)").bindparams(search_query=tsquery(words))
    return search_table.c.seq, search_table.c.document.op("@@")(query)


def has_words(engine: Engine, seq: int, words: Words) -> bool:
    """Whether the completion at `seq` holds every word (one probe of the index)."""
    found, condition = matching_seqs(engine.dialect.name, words)
    with engine.connect() as conn:
        return conn.execute(select(found).select_from(search_table).where(found == seq, condition)).first() is not None


# --- writes ----------------------------------------------------------------------------------------


@functools.cache
def insert_sql(dialect: str, count: int) -> str:
    """A multi-row insert of `count` (seq, document) pairs, in the DBAPI's paramstyle."""
    if dialect == "sqlite":
        return "INSERT INTO completion_search (rowid, document) VALUES " + ", ".join(["(?, ?)"] * count)
    return "INSERT INTO completion_search (seq, document) VALUES " + ", ".join(
        ["(%s, to_tsvector('simple', %s))"] * count
    )


def index_rows(execute: Callable[[str, list[Any]], Any], dialect: str, rows: Sequence[tuple[int, str]]) -> None:
    """Index (seq, document) pairs in the caller's write transaction; `execute`: a DBAPI cursor's."""
    for start in range(0, len(rows), _MULTI_ROW):
        chunk = rows[start : start + _MULTI_ROW]
        execute(insert_sql(dialect, len(chunk)), [v for row in chunk for v in row])


_MULTI_ROW = 256


def unindex_completions(
    conn: Connection, project_id: str, rows: Iterable[tuple[int, str, str]], bodies: dict[str, Any] | None = None
) -> None:
    """Take deleted completions out of the index, in the delete's transaction, before their message
    contents are freed. `rows`: (seq, response JSON, message digests JSON) of each. `bodies`: the
    messages by digest when the caller has them, else they are read. Rows above the watermark were never
    indexed (stillroom.store.search_tail) and are left alone. Nothing to do on PostgreSQL (the foreign key
    cascades)."""
    if conn.dialect.name != "sqlite":
        return
    through = conn.execute(text(WATERMARK_SQL)).scalar_one()
    rows = [row for row in rows if row[0] <= through]
    digests_of = {seq: orjson.loads(digests) for seq, _, digests in rows}
    if bodies is None:
        bodies = read_bodies(conn, project_id, {d for ds in digests_of.values() for d in ds})
    params = [
        {"seq": seq, "document": document_text([bodies[d] for d in digests_of[seq]], orjson.loads(response))}
        for seq, response, _ in rows
    ]
    if params:
        conn.execute(
            text(
                "INSERT INTO completion_search (completion_search, rowid, document) VALUES ('delete', :seq, :document)"
            ),
            params,
        )


def read_bodies(conn: Connection, project_id: str, digests: set[str]) -> dict[str, Any]:
    mc = message_contents.c
    wanted = sorted(digests)
    bodies: dict[str, Any] = {}
    for start in range(0, len(wanted), 512):
        stmt = select(mc.digest, mc.body).where(
            mc.project_id == project_id, mc.digest.in_(bindparam("digests", expanding=True))
        )
        for digest, body in conn.execute(stmt, {"digests": wanted[start : start + 512]}):
            bodies[digest] = orjson.loads(body)
    return bodies


# --- schema (the migration and the benchmark) -------------------------------------------------------


def create_search_index(conn: Connection, *, fill: bool = False) -> int:
    """Create the index table for this backend, empty or, with `fill`, holding every stored completion (on
    PostgreSQL the GIN index is then built once over the filled table rather than kept up row by row); how
    many completions were indexed."""
    table, *indexes = (SQLITE_DDL,) if conn.dialect.name == "sqlite" else POSTGRES_DDL
    conn.exec_driver_sql(table)
    count = fill_search_index(conn) if fill else 0
    for ddl in indexes:
        conn.exec_driver_sql(ddl)
    return count


def iter_documents(conn: Connection, batch: int = 2000) -> Iterator[list[tuple[int, str]]]:
    """(seq, document) of every stored completion, in seq order, a batch at a time: to fill the index."""
    after = -1
    while True:
        rows = conn.execute(
            text(
                "SELECT seq, project_id, response, message_digests FROM completions "
                "WHERE seq > :after ORDER BY seq LIMIT :n"
            ),
            {"after": after, "n": batch},
        ).all()
        if not rows:
            return
        out = []
        by_project: dict[str, set[str]] = {}
        for row in rows:
            by_project.setdefault(row.project_id, set()).update(orjson.loads(row.message_digests))
        bodies = {p: read_bodies(conn, p, ds) for p, ds in by_project.items()}
        for row in rows:
            messages = [bodies[row.project_id][d] for d in orjson.loads(row.message_digests)]
            out.append((int(row.seq), document_text(messages, orjson.loads(row.response))))
        yield out
        after = int(rows[-1].seq)


def fill_search_index(engine_or_conn: Engine | Connection) -> int:
    """Index every stored completion (the index must be empty); how many were indexed."""
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.begin() as conn:
            return fill_search_index(conn)
    conn = engine_or_conn
    dialect = conn.dialect.name
    count = 0
    for documents in iter_documents(conn):
        index_rows(lambda sql, params: conn.exec_driver_sql(sql, tuple(params)), dialect, documents)
        count += len(documents)
    return count

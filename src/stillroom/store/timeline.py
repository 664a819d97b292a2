"""Time ranges of stored completions as ranges of the commit sequence, so that a time filter walks the list
order's index only over the rows that can match.

A completion's time is its id's (minted when the request started, stillroom.wire.ids); the list order is
`seq` (when it was committed). The two disagree by how long a request took, so a time range is not a seq
range. Each row therefore carries a **commit clock**, `completions.clock`: the largest id time (µs) of
everything committed up to and including its batch (the batch's rows share it). It never decreases along
`seq` and is never below the row's own time. The `sequences` row of the completions keeps the last clock
and the **lag**: the largest `clock - id time` any row was given (how long the slowest request took from
its start to its commit, plus the spread of a batch).

- Every row created at or after `a` has clock >= a, and the clock never decreases, so all of them lie at
  or after the first seq whose clock is >= a (one probe of `(project_id, clock, seq)`).
- Every row created before `b` has clock < b + lag, so all of them lie before the first seq whose clock is
  >= b + lag (another probe).

The page query then walks that seq range and keeps the rows whose id is in [a, b) exactly; the walk costs
the matching rows plus those committed within `lag` of the range's end. The lag only grows: one request
that took an hour widens every later upper bound by an hour (still exact, only slower to walk).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select

from stillroom.store.tables import completions, sequences

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = {ch: n for n, ch in enumerate(_ALPHABET)}
_PREFIX = len("chatcmpl-")


def id_micros(completion_id: str) -> int:
    """The microsecond time a completion id was minted at (0 for an id not of Stillroom's form)."""
    value = 0
    for ch in completion_id[_PREFIX : _PREFIX + 9]:
        digit = _DIGIT.get(ch)
        if digit is None:
            return 0
        value = value * 62 + digit
    return value


@dataclass(frozen=True, slots=True)
class SeqRange:
    """Seqs in [first, stop) (None: unbounded), and the id bounds that are then checked row by row."""

    first: int | None
    stop: int | None


def seq_range(conn: Connection, project_id: str, after_us: int | None, before_us: int | None) -> SeqRange | None:
    """The seq range holding every completion of the project created in [after_us, before_us); None when
    no completion can be in it."""
    first = stop = None
    if after_us is not None:
        first = _first_seq_at(conn, project_id, after_us)
        if first is None:
            return None
    if before_us is not None:
        lag = conn.execute(select(sequences.c.lag).where(sequences.c.name == "completions")).scalar() or 0
        stop = _first_seq_at(conn, project_id, before_us + int(lag))
    return SeqRange(first, stop)


def _first_seq_at(conn: Connection, project_id: str, clock: int) -> int | None:
    c = completions.c
    found = conn.execute(
        select(c.seq).where(c.project_id == project_id, c.clock >= clock).order_by(c.clock, c.seq).limit(1)
    ).scalar()
    return None if found is None else int(found)

"""The writer: one thread per process performs every database write, in arrival order.

Completions are written in batches (the group commit): every completion that arrives while a batch is being
written joins the next one, so durability costs one commit per batch rather than one per completion. Any
other write (a metadata update, a delete, and later job and quota writes) is a function of a Connection
that the writer runs in a write transaction of its own (`write`, `submit_write`).

Nothing here runs on the event loop. What a loop hands over during one of its iterations (records, functions)
is collected in a list and passed to the thread in one queue put when the iteration's callbacks have run
(`call_soon`), so the thread is woken once per iteration, not once per record, and whatever finished in the
same iteration is committed together; the loop is woken once per batch with the outcomes (one
`call_soon_threadsafe` per loop and batch). Pool checkout,
`BEGIN IMMEDIATE` (which waits while another process holds SQLite's write lock), hashing and serialising
histories, and the commit itself all happen on the writer thread.

Checkpoints (SQLite). Every `CHECKPOINT_EVERY` batches, a thread of its own (at nice 19 on Linux, so that
it takes little of the core from the loop and the writer) copies the write-ahead log
back into the database while the writer goes on committing. SQLite starts the log from its beginning again
only once every frame in it has been copied back, which a copy running alongside commits never achieves (the
log grew by every commit's pages, without bound, under steady load). So the thread repeats its pass, each
copying what was committed during the one before, until one finds nothing new (every frame is copied back,
and the next batch starts the log anew) or began with at most `CHECKPOINT_LEFT` new frames, in at most
`CHECKPOINT_PASSES` passes. Unless it found nothing new, which is rare under load, the writer then copies the
few frames committed meanwhile itself, between two batches (about a millisecond, with its two fsyncs), and
its next batch starts the log anew. The log holds about `CHECKPOINT_EVERY` batches, and no commit waits on
a large copy or its fsync. On a machine so busy that the thread has not finished after `CHECKPOINT_LATE`
periods, the writer waits for it.

Search (SQLite). Batches leave the full-text index to the writer's own steps (stillroom.store.search_tail):
it indexes what it committed once it has had nothing to do for `INDEX_IDLE`, or `INDEX_EVERY` after the
oldest of them while it stays busy, `INDEX_STEP` completions a step at most, so that a step holds up the
next batch only briefly; `close` indexes everything before it stops. A search that must see every
completion committed before it runs `write(search_tail.catch_up)` first (stillroom.stored.catch_up_search).

Failures. A data or integrity error (a duplicate id, a value the column refuses) belongs to one record, so
that batch is retried record by record and only the culprit fails. Any other error (the database is
locked, down, or its tables are gone) would fail every record alike: the batch fails once, every caller
learns it at once (`x-stillroom-stored: false`), the first such failure is logged and the others counted.
`is_degraded` reports it (and a write that has been running for longer than `stall_after`) until a
write succeeds again; while failing and idle, the writer probes the database every `PROBE_EVERY` seconds,
so that health recovers even when nothing is being stored.

Callers: `await commit(record, timeout)` (returns once committed), `enqueue(record)` (no wait, for streams
that broke off), `submit(record)` (a concurrent Future, for threads), `await write(fn)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from stillroom.errors import QuotaExceededError
from stillroom.store import search_tail
from stillroom.store.completions import CompletionRecord, probe_writes, save_completions
from stillroom.store.db import checkpoint_wal, raw_write_transaction, write_transaction

log = logging.getLogger("stillroom.store")

T = TypeVar("T")
CHECKPOINT_EVERY = 100  # batches between WAL checkpoints (a one-completion batch adds ~16 pages to the log)
CHECKPOINT_PASSES = 4  # passes of the checkpoint thread at most, before the writer copies the rest itself
CHECKPOINT_LEFT = 32  # frames committed during its last pass that the writer may copy (two batches or so)
CHECKPOINT_LATE = 10  # periods after which the writer waits for a checkpoint the thread has not finished
PROBE_EVERY = 1.0  # seconds between probes while writes are failing and none is queued
INDEX_IDLE = 0.025  # seconds without work after which the writer indexes what it committed (SQLite)
INDEX_EVERY = 0.1  # seconds after the oldest unindexed commit by which a busy writer indexes it
INDEX_STEP = 128  # completions indexed per step at most
KEEP_DOCUMENTS = 10_000  # documents kept for steps that keep failing, at most


@dataclass(slots=True)
class _LoopWaiter:
    """A caller on an event loop: resolved on that loop, with one wake-up per batch."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_Waiter = Future[Any] | _LoopWaiter | None


@dataclass(slots=True)
class _Write:
    fn: Callable[[Connection], Any]
    waiter: _Waiter


_Item = tuple[CompletionRecord, _Waiter] | _Write


class CommitQueue:
    def __init__(self, engine: Engine, *, batch_size: int = 512, stall_after: float = 10.0) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._stall_after = stall_after
        self.committed = 0
        self.failed = 0
        self.batches = 0
        self.last_error: str | None = None
        self._failing_since: float | None = None  # monotonic time of the first failure since the last success
        self._busy_since: float | None = None  # monotonic start of the write in progress
        self._since_checkpoint = 0
        self._sqlite = engine.dialect.name == "sqlite"  # a WAL to checkpoint, a held connection, the index
        # SQLite: the writer keeps one connection (no checkout per batch, and its page cache stays warm; a
        # connection that another one wrote behind re-reads every page it touches). A server database
        # keeps the pool's checkout, whose ping replaces a connection the server dropped while idle.
        self._connection: Any = None
        # SQLite: seq -> search document of what this writer committed and has not indexed yet.
        self._unindexed: dict[int, str] | None = {} if self._sqlite else None
        self._unindexed_since: float | None = None  # monotonic time of the oldest of them
        self._checkpoints = ThreadPoolExecutor(
            1, thread_name_prefix="stillroom-checkpoint", initializer=_lowest_priority
        )
        self._checkpoint: Future[bool] | None = None
        self._queue: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()  # hand-overs; None: stop
        self._handed: dict[asyncio.AbstractEventLoop, list[_Item]] = {}  # this loop iteration's, not yet put
        self._thread = threading.Thread(target=self._run, name="stillroom-writer", daemon=True)
        self._thread.start()

    # --- the callers' side ---

    async def commit(self, record: CompletionRecord, timeout: float) -> None:
        """Return once `record` is committed; raise what storing raised, or TimeoutError."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._hand_over(loop, (record, _LoopWaiter(loop, future)))
        async with asyncio.timeout(timeout):
            await future

    def enqueue(self, record: CompletionRecord) -> None:
        """Store without waiting for the outcome (failures are still logged and counted)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: straight to the writer
            self._queue.put([(record, None)])
            return
        self._hand_over(loop, (record, None))

    def submit(self, record: CompletionRecord) -> Future[None]:
        """Queue `record` from any thread; the future resolves once it is committed."""
        future: Future[None] = Future()
        self._queue.put([(record, future)])
        return future

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` in a write transaction of its own on the writer thread and return its result; what
        it raises rolls the transaction back and is raised here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._hand_over(loop, _Write(fn, _LoopWaiter(loop, future)))
        return await future

    def submit_write(self, fn: Callable[[Connection], T]) -> Future[T]:
        """`write` for callers on a thread."""
        future: Future[T] = Future()
        self._queue.put([_Write(fn, future)])
        return future

    def is_degraded(self) -> bool:
        """Writes are failing (since the last success), or the one in progress has been stuck too long."""
        busy = self._busy_since
        return self._failing_since is not None or (busy is not None and time.monotonic() - busy > self._stall_after)

    def health(self) -> dict[str, Any]:
        failing = self._failing_since
        return {
            "committed": self.committed,
            "failed": self.failed,
            "batches": self.batches,
            "failing_for_s": None if failing is None else round(time.monotonic() - failing, 3),
            "last_error": self.last_error,
        }

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (handed over in a loop iteration that has not ended too), then stop."""
        for loop in list(self._handed):
            self._put_handed(loop)
        self._queue.put(None)
        self._thread.join(timeout)
        self._checkpoints.shutdown(wait=True)
        if self._sqlite:
            self._run_checkpoint()

    def _hand_over(self, loop: asyncio.AbstractEventLoop, item: _Item) -> None:
        """On `loop`: add `item` to what this iteration hands over; the first one schedules the put."""
        handed = self._handed.get(loop)
        if handed is None:
            self._handed[loop] = handed = []
            loop.call_soon(self._put_handed, loop)
        handed.append(item)

    def _put_handed(self, loop: asyncio.AbstractEventLoop) -> None:
        handed = self._handed.pop(loop, None)
        if handed:
            self._queue.put(handed)

    # --- the writer thread ---

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._release_connection()

    def _serve(self) -> None:
        while True:
            try:
                got = self._queue.get(timeout=self._idle_timeout())
            except queue.Empty:
                if self._checkpoint_copied():
                    self._finish_checkpoint()
                elif self._unindexed and not self._checkpointing():
                    self._index()
                elif self._failing_since is not None:
                    self._probe()
                continue
            items: list[_Item] = []
            while got is not None:
                items.extend(got)
                if len(items) >= self._batch_size:
                    break
                try:
                    got = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._drain(items)
            if self._checkpoint_copied():
                self._finish_checkpoint()
            since = self._unindexed_since
            if since is not None and time.monotonic() - since >= INDEX_EVERY and not self._checkpointing():
                self._index()
            if got is None:
                while self._unindexed and self._index():
                    pass
                return

    def _checkpointing(self) -> bool:
        """The checkpoint thread is copying the log back: an index step now would add its pages behind the
        copy, for the writer's own pass to copy; it waits for the next turn."""
        return self._checkpoint is not None and not self._checkpoint.done()

    def _checkpoint_copied(self) -> bool:
        return self._checkpoint is not None and self._checkpoint.done()

    def _idle_timeout(self) -> float | None:
        if self._failing_since is not None:
            return PROBE_EVERY
        return INDEX_IDLE if self._unindexed or self._checkpoint is not None else None

    def _drain(self, items: list[_Item]) -> None:
        """Write in arrival order: consecutive records in batches of at most `batch_size`, each function on
        its own."""
        batch: list[tuple[CompletionRecord, _Waiter]] = []
        for item in items:
            if isinstance(item, _Write):
                if batch:
                    self._save(batch)
                    batch = []
                self._run_write(item)
                continue
            batch.append(item)
            if len(batch) == self._batch_size:
                self._save(batch)
                batch = []
        if batch:
            self._save(batch)

    def _save(self, batch: list[tuple[CompletionRecord, _Waiter]]) -> None:
        outcomes: list[tuple[_Waiter, Any, BaseException | None]] = []
        self._save_split(batch, outcomes)
        _settle_all(outcomes)  # before the index step below: nobody waits on it
        self._since_checkpoint += 1
        if not self._sqlite or self._since_checkpoint < CHECKPOINT_EVERY:
            return
        if self._checkpoint is not None:
            if self._since_checkpoint < CHECKPOINT_LATE * CHECKPOINT_EVERY:
                return
            self._wait_for_checkpoint()
        self._since_checkpoint = 0
        if self._unindexed:  # first, or the step's pages would be written while the log is copied back
            self._index()
        self._checkpoint = self._checkpoints.submit(self._run_checkpoint)

    def _wait_for_checkpoint(self) -> None:
        """The checkpoint thread, at nice 19, has not finished in `CHECKPOINT_LATE` periods: other work keeps
        the CPUs busy. Wait for it (commits wait meanwhile, and /health says so after `stall_after`): the
        log must not grow without bound on a busy machine either."""
        checkpoint = self._checkpoint
        assert checkpoint is not None
        self._busy_since = time.monotonic()
        try:
            with contextlib.suppress(Exception):  # _run_checkpoint logs its own failures
                checkpoint.result()
        finally:
            self._busy_since = None
        self._finish_checkpoint()

    def _save_split(
        self, batch: list[tuple[CompletionRecord, _Waiter]], outcomes: list[tuple[_Waiter, Any, BaseException | None]]
    ) -> None:
        self._busy_since = time.monotonic()
        try:
            refused = save_completions(
                self._engine, [record for record, _ in batch], self._held_connection(), documents=self._unindexed
            )
        except Exception as exc:  # the edge of the writer: classify, count, report to each caller
            self._busy_since = None
            if not _is_data_error(exc):
                self._release_connection()  # the next batch starts on a fresh one
                self._failing(exc, f"storing completions failed ({len(batch)} in this batch)")
                self.failed += len(batch)
                outcomes.extend((waiter, None, exc) for _, waiter in batch)
            elif len(batch) > 1:  # one bad record must not sink the others
                for entry in batch:
                    self._save_split([entry], outcomes)
            else:
                self.failed += 1
                log.error("storing completion %s failed: %s", batch[0][0].id, exc)
                outcomes.append((batch[0][1], None, exc))
            return
        self._busy_since = None
        self._succeeded()
        if self._unindexed and self._unindexed_since is None:
            self._unindexed_since = time.monotonic()
        self.batches += 1
        self.committed += len(batch) - len(refused)
        for record, waiter in batch:
            if record.id in refused:  # would take its project past its quota: answered, not stored
                outcomes.append((waiter, None, QuotaExceededError(f"project {record.project_id!r} is at its quota")))
            else:
                outcomes.append((waiter, None, None))

    def _held_connection(self) -> Any:
        if self._sqlite and self._connection is None:
            self._connection = self._engine.raw_connection()
        return self._connection

    def _release_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # the edge of the writer: a broken connection is dropped
                connection.close()

    def _run_write(self, item: _Write) -> None:
        self._busy_since = time.monotonic()
        try:
            with write_transaction(self._engine) as conn:
                result = item.fn(conn)
        except Exception as exc:  # the edge of the writer: the caller gets what its function raised
            self._busy_since = None
            if _is_database_error(exc) and not _is_data_error(exc):
                self._failing(exc, "a write failed")
            _settle_all([(item.waiter, None, exc)])
            return
        self._busy_since = None
        self._succeeded()
        _settle_all([(item.waiter, result, None)])

    def _index(self) -> bool:
        """One search-index step (SQLite): whether it indexed anything. A failure is logged and the step
        retried later; the completions stay stored meanwhile, found by everything but a search."""
        unindexed = self._unindexed
        assert unindexed is not None
        self._busy_since = time.monotonic()
        try:
            with raw_write_transaction(self._engine, self._held_connection()) as cursor:
                indexed, through = search_tail.index_pending(cursor, unindexed, INDEX_STEP)
        except Exception as exc:  # the edge of the writer: the step is retried
            self._busy_since = None
            self._release_connection()
            self._failing(exc, "indexing stored completions for search failed")
            if len(unindexed) > KEEP_DOCUMENTS:  # a later step rebuilds them from the rows
                unindexed.clear()
            return False
        self._busy_since = None
        self._succeeded()
        for seq in [seq for seq in unindexed if seq <= through]:
            del unindexed[seq]
        self._unindexed_since = time.monotonic() if unindexed else None
        return indexed > 0

    def _probe(self) -> None:
        try:
            with write_transaction(self._engine) as conn:
                probe_writes(conn)
        except Exception as exc:  # the edge of the writer: still failing
            self.last_error = _describe(exc)
            return
        self._succeeded()

    def _failing(self, exc: Exception, what: str) -> None:
        self.last_error = _describe(exc)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("%s: %s; later failures are counted, not logged, until a write succeeds", what, exc)

    def _succeeded(self) -> None:
        if self._failing_since is not None:
            log.warning(
                "storing resumed after %.1fs of failures (%d completions not stored in all)",
                time.monotonic() - self._failing_since,
                self.failed,
            )
            self._failing_since = None
            self.last_error = None

    def _run_checkpoint(self) -> bool:
        """Passes, each copying what was committed during the one before, until one finds nothing new: then
        every frame is copied back and the next batch starts the log anew. Returns whether that happened
        within `CHECKPOINT_PASSES` (else the writer copies the rest itself)."""
        try:
            connection = self._engine.raw_connection()
            try:
                frames, _ = checkpoint_wal(self._engine, connection)
                for _ in range(CHECKPOINT_PASSES - 1):
                    before = frames
                    frames, copied = checkpoint_wal(self._engine, connection)
                    # Nothing committed since the last pass began (or the log restarted), and no reader held
                    # the copy back: every frame is in the database.
                    if frames <= before and copied == frames:
                        return True
                    if frames - before <= CHECKPOINT_LEFT:  # the writer's own pass will be short
                        break
            finally:
                connection.close()
        except Exception as exc:  # the edge of a worker thread: a failed checkpoint is retried next time
            log.warning("WAL checkpoint failed: %s", exc)
        return False

    def _finish_checkpoint(self) -> None:
        """Once the checkpoint thread is done: unless it copied every frame back, the writer copies what was
        committed during its last pass, so that the next batch can start the log anew (see the module doc)."""
        done, self._checkpoint = self._checkpoint, None
        if done is not None and done.result():
            return
        try:
            checkpoint_wal(self._engine, self._held_connection())
        except Exception as exc:  # the edge of the writer: the next checkpoint tries again
            self._release_connection()
            log.warning("WAL checkpoint failed: %s", exc)


def _lowest_priority() -> None:
    """Linux: run this thread at nice 19 (a thread's own priority there; elsewhere it would be the whole
    process's). Not SCHED_IDLE: that gets next to no CPU while other processes keep the machine busy."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _is_data_error(exc: BaseException) -> bool:
    """An error of one record's data (retrying it alone isolates it), as opposed to the database's state.
    TypeError, ValueError and OverflowError come from serialising or binding a value."""
    return isinstance(exc, IntegrityError | DataError | TypeError | ValueError | OverflowError)


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError | PoolTimeoutError | OSError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _settle_all(outcomes: list[tuple[_Waiter, Any, BaseException | None]]) -> None:
    """Report to each caller: threads directly, each event loop with one wake-up for all of its callers."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for waiter, result, exc in outcomes:
        if isinstance(waiter, _LoopWaiter):
            by_loop.setdefault(waiter.loop, []).append((waiter.future, result, exc))
        elif waiter is not None:
            _settle(waiter, result, exc)
    for loop, entries in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_each, entries)


def _settle_each(entries: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, exc in entries:
        _settle(future, result, exc)


def _settle(waiter: Future[Any] | asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Resolve, unless the caller stopped waiting: a timed-out or abandoned wait cancels the future, and
    resolving a cancelled future raises, which would kill the writer."""
    with contextlib.suppress(InvalidStateError, asyncio.InvalidStateError):
        if exc is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(exc)

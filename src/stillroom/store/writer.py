"""Group commit: completions are written in batches, one transaction per batch.

Every completion that arrives while a batch is being written joins the next one, so durability costs one
commit per batch rather than one per completion. Two ways to run it, chosen by the database:

- inline (SQLite): completions that finish in the same event-loop iteration are committed together at the
  end of it, on the loop itself. A SQLite commit in WAL mode takes tens of microseconds, less than the two
  thread wake-ups a writer thread would cost each request. The WAL is checkpointed every
  `CHECKPOINT_EVERY` batches on a worker thread, never inside a commit (at 1000 req/s, every 100 batches gave
  a p90 of 2.1-2.2 ms, every 1000 batches 1.2-1.3 ms; p50 alike, about 1.0 ms).
- thread (PostgreSQL): one writer thread, since a commit waits on the server and the network.

Callers wait with `commit(record)`; `enqueue(record)` stores without waiting (for streams that broke off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from concurrent.futures import Future, InvalidStateError

from sqlalchemy import Engine

from stillroom.store.completions import CompletionRecord, save_completions
from stillroom.store.db import checkpoint_wal

log = logging.getLogger("stillroom.store")

_STOP = object()
CHECKPOINT_EVERY = 1000  # inline batches between WAL checkpoints (about 40 MB of WAL at most)
_Waiter = Future[None] | asyncio.Future[None] | None


class CommitQueue:
    def __init__(self, engine: Engine, *, batch_size: int = 512, inline: bool | None = None) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self.inline = engine.dialect.name == "sqlite" if inline is None else inline
        self.committed = 0
        self.failed = 0
        self.batches = 0
        self._pending: list[tuple[CompletionRecord, _Waiter]] = []
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Future[None] | None = None
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if not self.inline:
            self._thread = threading.Thread(target=self._run, name="stillroom-commit", daemon=True)
            self._thread.start()

    async def commit(self, record: CompletionRecord, timeout: float) -> None:
        """Return once `record` is committed; raise what storing raised, or TimeoutError."""
        if not self.inline:
            await asyncio.wait_for(asyncio.wrap_future(self.submit(record)), timeout)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._add(record, future)
        await future  # inline commits block the loop, so there is nothing a timeout could interrupt

    def enqueue(self, record: CompletionRecord) -> None:
        """Store without waiting for the outcome (failures are still logged and counted)."""
        if self.inline:
            self._add(record, None)
        else:
            self.submit(record)

    def submit(self, record: CompletionRecord) -> Future[None]:
        """Thread mode: queue `record`; the future resolves once it is committed."""
        future: Future[None] = Future()
        self._queue.put((record, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop."""
        while self._pending:
            batch, self._pending = self._pending[: self._batch_size], self._pending[self._batch_size :]
            self._write(batch)
        if self.inline:
            self._run_checkpoint()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _add(self, record: CompletionRecord, waiter: _Waiter) -> None:
        self._pending.append((record, waiter))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        batch, self._pending = self._pending[: self._batch_size], self._pending[self._batch_size :]
        if self._pending:
            loop.call_soon(self._flush)
        self._write(batch)
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and (self._checkpoint is None or self._checkpoint.done()):
            self._since_checkpoint = 0
            self._checkpoint = loop.run_in_executor(None, self._run_checkpoint)

    def _run_checkpoint(self) -> None:
        try:
            checkpoint_wal(self._engine)
        except Exception as exc:  # the edge of a worker thread: a failed checkpoint is retried next time
            log.warning("WAL checkpoint failed: %s", exc)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self._batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)  # type: ignore[arg-type]
            if stop:
                return

    def _write(self, batch: list[tuple[CompletionRecord, _Waiter]]) -> None:
        try:
            save_completions(self._engine, [record for record, _ in batch])
        except Exception as exc:  # the edge of the writer: log, count, report to each caller
            if len(batch) > 1:  # one bad record must not sink the others
                for entry in batch:
                    self._write([entry])
                return
            self.failed += 1
            log.error("storing completion %s failed: %s", batch[0][0].id, exc)
            _settle(batch[0][1], exc)
            return
        self.batches += 1
        self.committed += len(batch)
        for _, waiter in batch:
            _settle(waiter, None)


def _settle(waiter: _Waiter, exc: Exception | None) -> None:
    """Report to the caller, unless it stopped waiting: a timed-out or abandoned wait cancels the future,
    and resolving a cancelled future raises, which would kill the writer."""
    if waiter is None:
        return
    with contextlib.suppress(InvalidStateError, asyncio.InvalidStateError):
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)

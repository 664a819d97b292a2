"""Group commit: one thread writes queued completions in batches, one transaction per batch.

Callers get a future that resolves once their completion is committed. Under load, every completion
that arrives while a batch is being written joins the next one, so durability costs one commit per
batch rather than one per completion.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from concurrent.futures import Future, InvalidStateError

from sqlalchemy import Engine

from stillroom.store.completions import CompletionRecord, save_completions

log = logging.getLogger("stillroom.store")

_STOP = object()


class CommitQueue:
    def __init__(self, engine: Engine, *, batch_size: int = 512) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.committed = 0
        self.failed = 0
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="stillroom-commit", daemon=True)
        self._thread.start()

    def submit(self, record: CompletionRecord) -> Future[None]:
        future: Future[None] = Future()
        self._queue.put((record, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

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

    def _write(self, batch: list[tuple[CompletionRecord, Future[None]]]) -> None:
        try:
            save_completions(self._engine, [record for record, _ in batch])
        except Exception as exc:  # the edge of the writer thread: log, count, report to each caller
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
        for _, future in batch:
            _settle(future, None)


def _settle(future: Future[None], exc: Exception | None) -> None:
    """Report to the caller, unless it stopped waiting: a timed-out `asyncio.wait_for(wrap_future(...))`
    cancels the future, and resolving a cancelled future raises, which would kill the commit thread."""
    with contextlib.suppress(InvalidStateError):
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)

"""Retention: stored completions older than their project's `retention_days` are deleted by a background
sweeper, in bounded batches (one short transaction each, so traffic is never stalled behind a long delete).

Several `serve` processes may sweep at once: each batch locks the project's usage row and deletes with
RETURNING, so a row is freed exactly once whoever gets there first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from stillroom.store import purge
from stillroom.store.db import Engine
from stillroom.store.projects import Writes
from stillroom.wire.ids import completion_id_floor

log = logging.getLogger("stillroom.retention")

DAY = 86_400


def sweep_retention(
    engine: Engine, writes: Writes, now: float, *, batch_size: int = 500, max_batches: int = 1000
) -> int:
    """Delete what is past retention as of `now` (unix seconds); how many completions were deleted. Stops
    after `max_batches` batches (the rest waits for the next sweep)."""
    deleted = 0
    batches = 0
    for project_id, days in purge.retained_projects(engine):
        cutoff = purge.CompletionFilter(id_to=completion_id_floor(int((now - days * DAY) * 1_000_000)))
        while batches < max_batches:
            done = writes(
                partial(purge.delete_completions_batch, project_id=project_id, selection=cutoff, limit=batch_size)
            )
            batches += 1
            deleted += done
            if done < batch_size:
                break
    return deleted


class RetentionSweeper:
    """Runs `sweep_retention` every `interval` seconds on its own thread."""

    def __init__(
        self,
        engine: Engine,
        writes: Writes,
        *,
        interval: float,
        batch_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._writes = writes
        self._interval = interval
        self._batch_size = batch_size
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stillroom-retention", daemon=True)
        self.deleted = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def sweep(self) -> int:
        done = sweep_retention(self._engine, self._writes, self._clock(), batch_size=self._batch_size)
        self.deleted += done
        if done:
            log.info("retention: deleted %d stored completions", done)
        return done

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except Exception as exc:  # the edge of a worker thread: try again next interval
                log.warning("retention sweep failed: %s", exc)

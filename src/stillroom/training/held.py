"""The job a worker holds, as a runner that follows an upstream job sees it: its stored upstream state, and
guarded writes (each a no-op once the lease is lost or the job cancelled).

The upstream state (ids of the upstream's copies of the files, its job id, the last event mirrored, its
fine-tuned model) is kept in the job's `method` JSON under `"upstream"`, which `render_job` never echoes and
a request cannot set (`wire/fine_tuning.py` rebuilds `method` from known keys only). So no migration was
needed, and a lost worker's successor finds the upstream job by its id instead of creating another.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from stillroom.store import job_queue as queue
from stillroom.store import jobs as store
from stillroom.store.db import Engine
from stillroom.store.projects import Writes
from stillroom.training.jobs import fine_tuned_model_name, new_event
from stillroom.wire.ids import new_sortable_id

STATE_KEY = "upstream"


def upstream_state(job: store.JobRow) -> dict[str, Any]:
    """What an earlier attempt stored about the job's upstream copy (empty before the first)."""
    return dict(job.method.get(STATE_KEY) or {})


def is_attached(job: store.JobRow) -> bool:
    """Whether an upstream job was created for this job (a new worker follows it, never makes another)."""
    return bool(upstream_state(job).get("job_id"))


class HeldJob:
    def __init__(self, engine: Engine, writes: Writes, worker_id: str, job: store.JobRow) -> None:
        self.engine = engine
        self._writes = writes
        self._worker_id = worker_id
        self.job = job
        self.state = upstream_state(job)

    def save(
        self, state: dict[str, Any] | None = None, values: dict[str, Any] | None = None, events: Sequence[str] = ()
    ) -> bool:
        """One transaction: the upstream state (merged), job values and info events."""
        changes = dict(values or {})
        if state:
            self.state.update(state)
            self.job.method = {**self.job.method, STATE_KEY: self.state}
            changes["method"] = self.job.method
        rows = [new_event(self.job.id, message) for message in events]
        return queue.update_held_job(self._writes, self.job.id, self._worker_id, changes, rows)

    def mirror(self, values: dict[str, Any], events: list[dict[str, Any]], seen: str | None) -> bool:
        """Upstream events (oldest first) and job values, with the id of the newest event as the new cursor."""
        rows = [
            new_event(
                self.job.id,
                str(e.get("message") or ""),
                level=str(e.get("level") or "info"),
                type_=str(e.get("type") or "message"),
                data=e.get("data") if isinstance(e.get("data"), dict) else None,
            )
            for e in events
        ]
        changes = dict(values)
        if seen is not None and seen != self.state.get("last_event"):
            self.state["last_event"] = seen
            self.job.method = {**self.job.method, STATE_KEY: self.state}
            changes["method"] = self.job.method
        return queue.update_held_job(self._writes, self.job.id, self._worker_id, changes, rows)

    def checkpoint_steps(self) -> set[int]:
        rows, _ = store.list_checkpoints(self.engine, self.job.id, after=None, limit=10_000)
        return {row.step_number for row in rows}

    def add_checkpoint(self, step: int, metrics: dict[str, Any]) -> bool:
        job = self.job
        name = fine_tuned_model_name(job.model, job.project_id, job.suffix, job.id) + f":ckpt-step-{step}"
        row = store.CheckpointRow(new_sortable_id("ftckpt_"), job.id, int(time.time()), step, metrics, name)
        return queue.add_held_checkpoint(
            self._writes, self._worker_id, row, new_event(job.id, f"Checkpoint created at step {step}")
        )

    def is_cancelled(self) -> bool:
        current = store.get_job(self.engine, None, self.job.id)
        return current is None or current.status == "cancelled"

    def note(self, message: str, level: str = "info") -> None:
        """An event whether or not the job is still held (after a cancel)."""
        store.add_events(self._writes, [new_event(self.job.id, message, level=level)])

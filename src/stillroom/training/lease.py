"""What a worker runs beside a job it holds: the heartbeat that keeps its lease (and notices a cancel or a lost
lease), and the reporter that turns the runner's events into job events, checkpoints and checkpoint files.

Both write only through guarded store calls (`worker_id = me` and an active status), so once the job is
cancelled or taken over they change nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from stillroom.errors import QuotaExceededError
from stillroom.store import job_queue as queue
from stillroom.store import jobs as store
from stillroom.store.blobs import FileStorage
from stillroom.store.projects import Writes
from stillroom.training.jobs import fine_tuned_model_name, new_event
from stillroom.training.results import keep_checkpoint_adapter, remove_files
from stillroom.wire.ids import new_sortable_id

log = logging.getLogger("stillroom.worker")


class LeaseKeeper:
    """Renews the lease every third of it (at most every 2 s); `stopped()` turns true once the job is cancelled
    or lost. Used as a context manager around the work."""

    def __init__(self, writes: Writes, worker_id: str, job_id: str, lease_seconds: float) -> None:
        self._writes = writes
        self._worker_id = worker_id
        self._job_id = job_id
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def stopped(self) -> bool:
        return self._lost.is_set()

    def _beat(self) -> None:
        interval = min(self._lease_seconds / 3, 2.0)
        while not self._stop.wait(interval):
            try:
                held = queue.renew_lease(
                    self._writes, self._job_id, self._worker_id, lease_seconds=self._lease_seconds, now=time.time()
                )
            except Exception as exc:  # the heartbeat thread's edge: a missed beat is retried
                log.warning("heartbeat for %s failed: %s", self._job_id, exc)
                continue
            if not held:
                self._lost.set()
                return


class EventReporter:
    """Turns the runner's events into job events (metrics move `estimated_finish`) and checkpoints, each with its
    adapter (the event's `path`, a PEFT adapter folder) kept as a result file (`training/results.py`)."""

    def __init__(self, writes: Writes, storage: FileStorage, worker_id: str, job: store.JobRow) -> None:
        self._writes = writes
        self._storage = storage
        self._worker_id = worker_id
        self._job = job
        self.step: int | None = None  # the last step reported

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "checkpoint":
            self._checkpoint(int(event["step_number"]), dict(event.get("metrics") or {}), event.get("path"))
            return
        job = self._job
        data = event.get("data")
        values: dict[str, Any] = {}
        if data:
            self.step = data.get("step", self.step)
            if data.get("eta_seconds") is not None:
                values["estimated_finish"] = int(time.time() + float(data["eta_seconds"]))
        row = new_event(
            job.id,
            str(event.get("message") or ""),
            level=str(event.get("level") or "info"),
            type_=str(event.get("type") or "message"),
            data=data,
        )
        queue.update_held_job(self._writes, job.id, self._worker_id, values, [row])

    def _checkpoint(self, step: int, metrics: dict[str, Any], path: object) -> None:
        job = self._job
        files: list[str] = []
        if isinstance(path, Path):
            try:
                files = keep_checkpoint_adapter(self._writes, self._storage, job.project_id, job.id, step, path)
            except QuotaExceededError as exc:  # the run goes on without this checkpoint's file
                warning = f"The adapter of the checkpoint at step {step} was not kept: {exc.message}"
                queue.update_held_job(
                    self._writes, job.id, self._worker_id, {}, [new_event(job.id, warning, level="warn")]
                )
        name = fine_tuned_model_name(job.model, job.project_id, job.suffix, job.id) + f":ckpt-step-{step}"
        checkpoint = store.CheckpointRow(
            new_sortable_id("ftckpt_"), job.id, int(time.time()), step, metrics, name, files
        )
        event = new_event(job.id, f"Checkpoint created at step {step}")
        if not queue.add_held_checkpoint(self._writes, self._worker_id, checkpoint, event):  # cancelled or lost
            remove_files(self._writes, self._storage, job.project_id, files)

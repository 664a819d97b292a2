"""A worker: claims jobs from the database, validates their files, runs them, and reports through events.

A claim is a lease (`lease_seconds`) that a heartbeat thread (`training/lease.py`) renews while the job runs; the
same heartbeat notices a cancel (the API marks the row) or a lost lease, and `should_stop()` then tells the
trainer to stop at its next step. A worker killed mid-job stops renewing: once the lease has run out another
worker takes the job over and starts it again, or fails it with `worker_lost` after `max_attempts` runs.
Heavy libraries are imported only by the runner, inside this process. A job whose base model is served by an
`openai` or `azure` provider goes to the upstream runner instead (`training/upstream.py`), which trains it
there and follows it while this worker holds the lease; once it has an upstream job, a new worker follows that
job again (`training/held.py`) however often workers are lost.

A cancelled job that a worker had taken up is wound down (`store/job_queue.py`): by its holder when it notices the
cancel, or by any worker once no live one holds it (queued again, or its worker lost): its checkpoint files
are deleted, and an upstream job is cancelled there and its copies of the files deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stillroom.config import ModelConfig
from stillroom.errors import QuotaExceededError
from stillroom.store import files as file_store
from stillroom.store import job_queue as queue
from stillroom.store import jobs as store
from stillroom.store.blobs import FileStorage
from stillroom.store.db import Engine
from stillroom.store.projects import Writes, direct_writes
from stillroom.training import results
from stillroom.training.held import HeldJob, is_attached
from stillroom.training.jobs import fine_tuned_model_name, new_event
from stillroom.training.lease import EventReporter, LeaseKeeper
from stillroom.training.overlap import find_overlap
from stillroom.wire.files import MIN_EXAMPLES, FileFormatError, FineTuneValidator
from stillroom.wire.ids import new_sortable_id

log = logging.getLogger("stillroom.worker")


class JobCancelled(Exception):
    """The runner stopped because `should_stop()` said so."""


class JobFailed(Exception):
    """A failure to report on the job as OpenAI does: `error: {code, message, param}`."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


@dataclass
class RunContext:
    job: store.JobRow
    base_model: ModelConfig
    training_path: Path
    validation_path: Path | None
    output_dir: Path
    n_examples: int
    on_event: Callable[[dict[str, Any]], None]
    should_stop: Callable[[], bool]
    held: HeldJob | None = None  # for the upstream runner: the job's stored upstream state and guarded writes


@dataclass
class RunResult:
    hyperparameters: dict[str, Any]
    trained_tokens: int
    metrics_csv: Path | None = None
    adapter_dir: Path | None = None
    gguf_path: Path | None = None
    upstream_model: str | None = None  # an upstream job's fine_tuned_model: the `ft:` name routes to it


class Runner(Protocol):
    def resolve_hyperparameters(self, context: RunContext) -> dict[str, Any]: ...

    def run(self, context: RunContext) -> RunResult: ...


class RemoteRunner(Runner, Protocol):
    """A runner whose jobs live on elsewhere (upstream): a cancelled job's remote side is wound down too."""

    def wind_down(self, held: HeldJob, base: ModelConfig) -> None: ...


WIND_DOWN_SECONDS = 300.0  # a wind-down's lease: its holder has this long before another worker does it again


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_sortable_id('')[-6:]}"


class Worker:
    def __init__(
        self,
        engine: Engine,
        storage: FileStorage,
        models: Mapping[str, ModelConfig],
        runner: Runner,
        *,
        work_dir: Path,
        lease_seconds: float = 30.0,
        max_attempts: int = 2,
        worker_id: str | None = None,
        writes: Writes | None = None,
        stopping: threading.Event | None = None,
        upstream_runner: RemoteRunner | None = None,
    ) -> None:
        self.engine = engine
        self.writes = writes or direct_writes(engine)
        self.stopping = stopping or threading.Event()  # set: stop the running job and hand it back
        self.storage = storage
        self.models = models
        self.runner = runner
        self.upstream_runner = upstream_runner  # for base models of `openai` and `azure` providers
        self.work_dir = Path(work_dir)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.id = worker_id or new_worker_id()

    def run_forever(self, stop: threading.Event, *, poll_seconds: float = 1.0) -> None:
        log.info("worker %s waiting for fine-tuning jobs", self.id)
        while not stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the worker loop's edge: log, wait, go on
                log.exception("worker %s: claiming or running a job failed", self.id)
                worked = False
            if not worked:
                stop.wait(poll_seconds)

    def run_once(self) -> bool:
        """Claim one job and take it one step (validation, or the whole run); False when none was waiting."""
        job = queue.claim_job(self.writes, self.id, lease_seconds=self.lease_seconds, now=time.time())
        if job is None:
            return self._claim_wind_down()
        takeover = job.worker_id is not None
        if takeover:
            log.warning("worker %s takes over %s from %s (lease expired)", self.id, job.id, job.worker_id)
        try:
            if is_attached(job):  # its upstream job goes on wherever its worker went: follow it again
                self._run(job, takeover)
            elif job.status == "validating_files":
                self._validate(job)
            elif takeover and job.status == "running" and job.attempts >= self.max_attempts:
                message = (
                    f"The worker running this job ({job.worker_id}) stopped sending heartbeats, "
                    f"after {job.attempts} attempt(s); the job was not retried again."
                )
                raise JobFailed("worker_lost", message)
            else:
                self._run(job, takeover)
        except JobFailed as exc:
            self._finish(job, {"status": "failed", "error": exc.error}, str(exc), "error")
        except Exception as exc:  # the edge of one job: it fails with the reason, the worker goes on
            log.exception("job %s failed", job.id)
            self._finish(
                job,
                {"status": "failed", "error": {"code": "server_error", "message": str(exc)[:1000], "param": None}},
                f"Job failed: {exc}",
                "error",
            )
        return True

    def _lease(self, job_id: str) -> LeaseKeeper:
        return LeaseKeeper(self.writes, self.id, job_id, self.lease_seconds)

    def _finish(self, job: store.JobRow, values: dict[str, Any], message: str, level: str = "info") -> bool:
        finish = queue.Finish(
            {**values, "finished_at": int(time.time()), "estimated_finish": None},
            [new_event(job.id, message, level=level)],
        )
        finished = queue.finish_held_job(self.writes, job.id, self.id, finish)
        if finished and values.get("status") == "failed":
            results.drop_checkpoint_files(self.writes, self.storage, job)
        return finished

    def _claim_wind_down(self) -> bool:
        """A cancelled job's wind-down that no live worker holds (`store/job_queue.py`)."""
        job = queue.claim_wind_down(self.writes, self.id, lease_seconds=WIND_DOWN_SECONDS, now=time.time())
        if job is None:
            return False
        log.info("worker %s winds down cancelled job %s", self.id, job.id)
        self._wind_down(job)
        return True

    def _wind_down(self, job: store.JobRow) -> None:
        """Delete what a cancelled job left (checkpoint files; an upstream job, cancelled there), then let it go."""
        try:
            results.drop_checkpoint_files(self.writes, self.storage, job)
            base = self.models.get(job.model)
            if is_attached(job) and base is not None and base.provider != "local" and self.upstream_runner:
                self.upstream_runner.wind_down(HeldJob(self.engine, self.writes, self.id, job), base)
        finally:
            queue.end_wind_down(self.writes, job.id, self.id)

    # --- validating_files -> queued ---

    def _validate(self, job: store.JobRow) -> None:
        with self._lease(job.id):  # a long file keeps the lease alive while it is read
            training_path, n_examples = self._check_file(job, job.training_file, "training_file")
            validation_path = None
            if job.validation_file is not None:
                validation_path, _ = self._check_file(job, job.validation_file, "validation_file")
                self._check_overlap(job, training_path, validation_path)
        if n_examples < MIN_EXAMPLES:
            raise JobFailed(
                "invalid_n_examples",
                f"Training file has {n_examples} example(s), but must have at least {MIN_EXAMPLES} examples",
                "training_file",
            )
        context = self._context(job, training_path, validation_path, n_examples, lambda _e: None, lambda: False)
        hyperparameters = self._runner(context).resolve_hyperparameters(context)
        events = [
            new_event(job.id, f"Validated training file: {n_examples} examples"),
            new_event(job.id, "Job enqueued"),
        ]
        queue.update_held_job(
            self.writes,
            job.id,
            self.id,
            {"status": "queued", "hyperparameters": hyperparameters, "worker_id": None, "lease_expires_at": None},
            events,
        )

    def _check_file(self, job: store.JobRow, file_id: str, param: str) -> tuple[Path, int]:
        row = file_store.get_file(self.engine, job.project_id, file_id)
        if row is None:
            raise JobFailed("invalid_file", f"File {file_id} no longer exists.", param)
        validator = FineTuneValidator()
        try:
            with self.storage.open(row.storage_key) as source:
                while chunk := source.read(1 << 20):
                    validator.feed(chunk)
            return self.storage.local_path(row.storage_key), validator.finish()
        except FileFormatError as exc:
            raise JobFailed("invalid_file_format", f"File {file_id}: {exc}", param) from None

    def _check_overlap(self, job: store.JobRow, training_path: Path, validation_path: Path) -> None:
        with training_path.open("rb") as training, validation_path.open("rb") as validation:
            overlap = find_overlap(training, validation)
        if overlap.shared:
            raise JobFailed(
                "invalid_validation_file",
                f"Validation file {job.validation_file} shares {overlap.shared} example(s) with the training file "
                f"(the first on line {overlap.first_line}); training and validation data must not overlap.",
                "validation_file",
            )

    # --- queued -> running -> succeeded ---

    def _run(self, job: store.JobRow, takeover: bool) -> None:
        again = (
            f"{self.id} follows the upstream job again" if is_attached(job) else f"the job starts again on {self.id}"
        )
        message = (
            "Fine-tuning job started" if not takeover else f"Worker {job.worker_id} stopped sending heartbeats; {again}"
        )
        attempts = job.attempts + 1
        if not queue.update_held_job(
            self.writes,
            job.id,
            self.id,
            {"status": "running", "attempts": attempts},
            [new_event(job.id, message, level="warn" if takeover else "info")],
        ):
            return
        job.attempts = attempts
        if not is_attached(job):  # it trains from the base again
            results.drop_earlier_checkpoints(self.writes, self.storage, job, self.id)
        output_dir = self.work_dir / job.id
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)
        training_path, n_examples = self._check_file(job, job.training_file, "training_file")
        validation_path = None
        if job.validation_file is not None:
            validation_path, _ = self._check_file(job, job.validation_file, "validation_file")
        heartbeat = self._lease(job.id)
        reporter = EventReporter(self.writes, self.storage, self.id, job)
        context = self._context(
            job,
            training_path,
            validation_path,
            n_examples,
            reporter.on_event,
            lambda: heartbeat.stopped() or self.stopping.is_set(),
        )
        context.output_dir = output_dir
        if context.base_model.provider != "local":
            context.held = HeldJob(self.engine, self.writes, self.id, job)
        with heartbeat:
            try:
                result = self._runner(context).run(context)
            except JobCancelled:
                self._stopped(job, reporter)
                return
        if heartbeat.stopped() or self.stopping.is_set():
            self._stopped(job, reporter)
            return
        self._succeed(job, result)

    def _context(
        self,
        job: store.JobRow,
        training_path: Path,
        validation_path: Path | None,
        n_examples: int,
        on_event: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
    ) -> RunContext:
        base = self.models.get(job.model)
        if base is None or (base.provider != "local" and self.upstream_runner is None):
            where = "a local model" if self.upstream_runner is None else "a model"
            raise JobFailed("model_not_available", f"Model {job.model!r} is not {where} on this worker.", "model")
        return RunContext(
            job, base, training_path, validation_path, self.work_dir / job.id, n_examples, on_event, should_stop
        )

    def _runner(self, context: RunContext) -> Runner:
        if context.base_model.provider == "local":
            return self.runner
        assert self.upstream_runner is not None  # _context checked
        return self.upstream_runner

    def _stopped(self, job: store.JobRow, reporter: EventReporter) -> None:
        step = f" at step {reporter.step}" if reporter.step is not None else ""
        current = store.get_job(self.engine, None, job.id)
        if current is not None and current.status == "cancelled":
            store.add_events(self.writes, [new_event(job.id, f"Training stopped{step}: the job was cancelled")])
            now = time.time()
            if queue.hold_wind_down(self.writes, job.id, self.id, lease_seconds=WIND_DOWN_SECONDS, now=now):
                self._wind_down(current)
        elif self.stopping.is_set():  # this worker is shutting down: another may take the job at once
            queue.update_held_job(
                self.writes,
                job.id,
                self.id,
                {"status": "queued", "worker_id": None, "lease_expires_at": None},
                [
                    new_event(
                        job.id,
                        f"Training stopped{step}: worker {self.id} shut down; the job is queued again",
                        level="warn",
                    )
                ],
            )
        log.info("job %s stopped (%s)", job.id, current.status if current else "deleted")
        shutil.rmtree(self.work_dir / job.id, ignore_errors=True)

    def _succeed(self, job: store.JobRow, result: RunResult) -> None:
        name = fine_tuned_model_name(job.model, job.project_id, job.suffix, job.id)
        registered = self._register_results(job, result)
        gguf = next((row.id for row in registered if row.filename.endswith(".gguf")), None)
        if result.upstream_model is not None:
            gguf = ""  # served upstream: the row names no file, its job's state names the upstream's model
        made = int(time.time())
        model = store.ModelRow(name, job.project_id, job.id, job.model, gguf, made) if gguf is not None else None
        finish = queue.Finish(
            {
                "status": "succeeded",
                "fine_tuned_model": name if model else None,
                "trained_tokens": result.trained_tokens,
                "hyperparameters": result.hyperparameters,
                "result_files": [row.id for row in registered],
                "finished_at": int(time.time()),
                "estimated_finish": None,
            },
            [
                new_event(job.id, f"New fine-tuned model created: {name}" if model else "Training finished"),
                new_event(job.id, "The job has successfully completed"),
            ],
            model,
        )
        if not queue.finish_held_job(self.writes, job.id, self.id, finish):  # cancelled at the last moment
            results.remove_files(self.writes, self.storage, job.project_id, (row.id for row in registered))
        shutil.rmtree(self.work_dir / job.id, ignore_errors=True)

    def _register_results(self, job: store.JobRow, result: RunResult) -> list[file_store.FileRow]:
        sources: list[tuple[Path, str]] = []
        if result.metrics_csv is not None:
            sources.append((result.metrics_csv, f"{job.id}-step_metrics.csv"))
        if result.adapter_dir is not None:
            archive = results.zip_adapter(result.adapter_dir, self.work_dir / job.id / "adapter.zip")
            sources.append((archive, f"{job.id}-adapter.zip"))
        if result.gguf_path is not None:
            sources.append((result.gguf_path, f"{job.id}.gguf"))
        try:
            return results.keep_result_files(self.writes, self.storage, job.project_id, sources)
        except QuotaExceededError as exc:  # none of them kept: the job fails, saying why
            raise JobFailed("quota_exceeded", f"The job's result files were not kept: {exc.message}") from None

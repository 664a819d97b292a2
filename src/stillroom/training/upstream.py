"""Upstream fine-tuning: a job whose base model is served by an `openai` or `azure` provider is trained by that
upstream, and the worker that holds the job follows it there.

The worker validates the files as for a local job; then this runner uploads them (`POST /files`, purpose
`fine-tune`), creates the upstream job (`POST /fine_tuning/jobs`: the model's `upstream_model`, the asked
hyperparameters, suffix and seed, and `metadata.stillroom_job_id`), and polls it every `poll_seconds` while
the worker's heartbeat keeps the lease: the upstream's status, estimated finish and resolved hyperparameters
are copied onto the job, its events and checkpoints added as the job's own. Each step is stored as soon as it
is done (`training/held.py`), so a worker that dies is replaced by one that follows the same upstream job; one
that died between creating the job and storing its id is found by its `stillroom_job_id` before anything is
created again. A worker shutting down leaves the upstream job running for the next worker. On success the
upstream's step-metrics CSV is copied into a result file, and the worker registers Stillroom's `ft:` name for
the upstream's model (`training/models.py` routes it).

A cancel is forwarded (`POST …/cancel`) when the job is wound down (`wind_down`): by the worker following it,
or, when none was (the job queued again, or its worker lost), by the next worker free. Once the upstream job
has ended (or the job fails or is cancelled here), the upstream's copies of the training and validation files
are deleted, best effort: a refusal is logged and noted as a warning event.

Upstream answers that may pass (its 5xx and 429, timeouts, refused connections) are retried at the next poll,
with one warning event per outage; any other refusal fails the job with the upstream's error code and message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from stillroom.config import ModelConfig
from stillroom.errors import BadGatewayError, GatewayTimeoutError, StillroomError, UpstreamError
from stillroom.providers.upstream_jobs import UpstreamJobs
from stillroom.store import files as file_store
from stillroom.store.jobs import ACTIVE
from stillroom.training.held import HeldJob
from stillroom.training.worker import JobCancelled, JobFailed, RunContext, RunResult

T = TypeVar("T")
JOB_KEY = "stillroom_job_id"  # the upstream job's metadata key naming the Stillroom job it runs
_FILE_WAIT_SECONDS = 600.0
_CANCEL_TRIES = 3
_FILE_PARAMS = ("training_file", "validation_file")
log = logging.getLogger("stillroom.worker")


class UpstreamRunner:
    """The runner for base models of `openai` and `azure` providers: training happens upstream."""

    def __init__(self, *, poll_seconds: float = 2.0) -> None:
        self.poll_seconds = poll_seconds

    def resolve_hyperparameters(self, context: RunContext) -> dict[str, Any]:
        """As asked ("auto" kept): the upstream resolves them, and the job shows its values once it does."""
        return dict(context.job.method["supervised"]["hyperparameters"])

    def run(self, context: RunContext) -> RunResult:
        assert context.held is not None, "the worker passes upstream runs the job it holds"
        return asyncio.run(_UpstreamRun(context, context.held, self.poll_seconds).run())

    def wind_down(self, held: HeldJob, base: ModelConfig) -> None:
        """A cancelled job: cancel its upstream job if that still runs, and delete the upstream's file copies."""
        asyncio.run(_wind_down(held, base, self.poll_seconds))


async def _wind_down(held: HeldJob, base: ModelConfig, pause: float) -> None:
    upstream_id = str(held.state["job_id"])
    async with aiohttp.ClientSession() as session:
        client = UpstreamJobs(base, session)
        for attempt in range(_CANCEL_TRIES):
            try:
                if (await client.retrieve_job(upstream_id)).get("status") in ACTIVE:
                    await client.cancel_job(upstream_id)
                    held.note(f"Cancelled upstream job {upstream_id}")
                break
            except StillroomError as exc:
                if attempt + 1 < _CANCEL_TRIES and _is_transient(exc):
                    await asyncio.sleep(pause)
                    continue
                log.warning("job %s: could not cancel upstream job %s: %s", held.job.id, upstream_id, _reason(exc))
                held.note(f"Could not cancel upstream job {upstream_id}: {_reason(exc)}", level="warn")
                break
        if not held.state.get("files_deleted"):
            await _delete_copies(client, held)


async def _delete_copies(client: UpstreamJobs, held: HeldJob) -> None:
    """Delete the upstream's copies of the job's files (best effort: each refusal logged and noted)."""
    deleted: list[str] = []
    for param in _FILE_PARAMS:
        file_id = held.state.get(param)
        if not file_id:
            continue
        try:
            await client.delete_file(str(file_id))
        except StillroomError as exc:
            if isinstance(exc, UpstreamError) and exc.status == 404:  # gone already
                continue
            log.warning("job %s: could not delete upstream file %s: %s", held.job.id, file_id, _reason(exc))
            held.note(f"Could not delete the upstream copy {file_id} of the {param}: {_reason(exc)}", "warn")
            continue
        deleted.append(str(file_id))
    if deleted:
        log.info("job %s: deleted upstream files %s on %s", held.job.id, ", ".join(deleted), client.host)
        held.note(f"Deleted the upstream copies of the job's files on {client.host}: {', '.join(deleted)}")


class _UpstreamRun:
    def __init__(self, context: RunContext, held: HeldJob, poll_seconds: float) -> None:
        self.context = context
        self.held = held
        self.job = context.job
        self.poll_seconds = poll_seconds
        self._outage = False

    async def run(self) -> RunResult:
        async with aiohttp.ClientSession() as session:
            self.client = UpstreamJobs(self.context.base_model, session)
            try:
                final = await self._follow(await self._attach())
            except JobFailed:  # the job ends here: the upstream's copies of its files are no use now
                await self._delete_copies()
                raise
            await self._delete_copies()  # the upstream job has ended
            return await self._result(final)

    async def _delete_copies(self) -> None:
        await _delete_copies(self.client, self.held)
        self.held.save({"files_deleted": True})

    # --- uploading the files and creating the job, once ---

    async def _attach(self) -> str:
        state, host = self.held.state, self.client.host
        if state.get("job_id"):
            self.held.save(events=[f"Following upstream job {state['job_id']} on {host} again"])
            return str(state["job_id"])
        training = state.get("training_file") or await self._upload(
            self.job.training_file, self.context.training_path, "training_file"
        )
        validation = state.get("validation_file")
        if self.job.validation_file is not None and validation is None:
            assert self.context.validation_path is not None
            validation = await self._upload(self.job.validation_file, self.context.validation_path, "validation_file")
        found = await self._retrying(self._find_job)
        if found is not None:
            self.held.save({"job_id": found["id"]}, events=[f"Found upstream job {found['id']} on {host} again"])
            return str(found["id"])
        created = await self._retrying(lambda: self.client.create_job(self._create_body(training, validation)))
        self.held.save(
            {"job_id": created["id"]}, events=[f"Created upstream fine-tuning job {created['id']} on {host}"]
        )
        return str(created["id"])

    async def _upload(self, file_id: str, path: Path, param: str) -> str:
        row = file_store.get_file(self.held.engine, self.job.project_id, file_id)
        filename = row.filename if row is not None else f"{file_id}.jsonl"
        uploaded = await self._retrying(partial(self.client.upload_file, path, filename))
        deadline = time.monotonic() + _FILE_WAIT_SECONDS
        while uploaded.get("status") not in (None, "processed") and time.monotonic() < deadline:
            if uploaded.get("status") == "error":
                raise JobFailed(
                    "invalid_file", f"The upstream refused {file_id}: {uploaded.get('status_details')}", param
                )
            await self._pause()
            uploaded = await self._retrying(partial(self.client.retrieve_file, str(uploaded["id"])))
        upstream_file = str(uploaded["id"])
        self.held.save({param: upstream_file}, events=[f"Uploaded {file_id} to {self.client.host} as {upstream_file}"])
        return upstream_file

    async def _find_job(self) -> dict[str, Any] | None:
        try:
            return await self.client.find_job(JOB_KEY, self.job.id)
        except UpstreamError as exc:
            if exc.status < 500 and exc.status != 429:  # an upstream without the metadata filter
                return None
            raise

    def _create_body(self, training: str, validation: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.context.base_model.target_model,
            "training_file": training,
            "seed": self.job.seed,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": self.job.method["supervised"]["hyperparameters"]},
            },
            "metadata": {JOB_KEY: self.job.id},
        }
        if validation is not None:
            body["validation_file"] = validation
        if self.job.suffix is not None:
            body["suffix"] = self.job.suffix
        return body

    # --- following it ---

    async def _follow(self, upstream_id: str) -> dict[str, Any]:
        steps = self.held.checkpoint_steps()
        while True:
            await self._check_stop()
            upstream = await self._retrying(partial(self.client.retrieve_job, upstream_id))
            seen = self.held.state.get("last_event")
            events = await self._retrying(partial(self.client.list_events_since, upstream_id, seen))
            checkpoints = await self._retrying(partial(self.client.list_checkpoints, upstream_id))
            self.held.mirror(_mirrored(upstream), events, str(events[-1]["id"]) if events else None)
            for checkpoint in sorted(checkpoints, key=lambda c: int(c.get("step_number") or 0)):
                step = int(checkpoint.get("step_number") or 0)
                if step not in steps and self.held.add_checkpoint(step, dict(checkpoint.get("metrics") or {})):
                    steps.add(step)
            if upstream.get("status") not in ACTIVE:
                return upstream
            await self._pause()

    async def _check_stop(self) -> None:
        """Cancelled (the worker winds the upstream job down), the lease lost or this worker stopping (the
        upstream job goes on, for the next worker)."""
        if self.context.should_stop():
            raise JobCancelled("stopped")

    async def _pause(self) -> None:
        deadline = time.monotonic() + self.poll_seconds
        while time.monotonic() < deadline and not self.context.should_stop():
            await asyncio.sleep(min(0.25, self.poll_seconds))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, again at each poll while the upstream's failure may pass; JobFailed when it cannot."""
        while True:
            try:
                found = await call()
            except StillroomError as exc:
                if not _is_transient(exc):
                    raise _failure(exc, self.client.host) from None
                if not self._outage:
                    self._outage = True
                    self.held.save(events=[f"The upstream {self.client.host} did not answer: {_reason(exc)}; retrying"])
                await self._pause()
                await self._check_stop()
                continue
            if self._outage:
                self._outage = False
                self.held.save(events=[f"The upstream {self.client.host} answers again"])
            return found

    # --- the end ---

    async def _result(self, upstream: dict[str, Any]) -> RunResult:
        status, upstream_id = upstream.get("status"), str(upstream["id"])
        if status == "cancelled":
            self.held.save(
                values={"status": "cancelled", "finished_at": int(time.time()), "estimated_finish": None},
                events=[f"Upstream job {upstream_id} was cancelled upstream"],
            )
            raise JobCancelled("cancelled upstream")
        if status != "succeeded":
            error = upstream.get("error") or {}
            message = error.get("message") or f"it ended {status}"
            raise JobFailed(
                str(error.get("code") or "upstream_job_failed"),
                f"Upstream job {upstream_id} on {self.client.host} failed: {message}",
                error.get("param"),
            )
        model = upstream.get("fine_tuned_model")
        if not model:
            raise JobFailed("upstream_job_failed", f"Upstream job {upstream_id} succeeded without a fine_tuned_model")
        self.held.save({"fine_tuned_model": model}, events=[f"Upstream model: {model}"])
        resolved = upstream.get("hyperparameters")
        return RunResult(
            hyperparameters=resolved if isinstance(resolved, dict) else self.held.job.hyperparameters or {},
            trained_tokens=int(upstream.get("trained_tokens") or 0),
            metrics_csv=await self._metrics_csv(upstream),
            upstream_model=str(model),
        )

    async def _metrics_csv(self, upstream: dict[str, Any]) -> Path | None:
        """The upstream's step-metrics CSV (OpenAI's one result file), copied here; other result files (another
        Stillroom's adapter and GGUF) stay upstream."""
        for file_id in upstream.get("result_files") or []:
            found = await self._retrying(partial(self.client.retrieve_file, str(file_id)))
            if str(found.get("filename") or "").endswith(".csv"):
                target = self.context.output_dir / "step_metrics.csv"
                await self._retrying(partial(self.client.download_file, str(file_id), target))
                return target
        return None


def _mirrored(upstream: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {"estimated_finish": upstream.get("estimated_finish")}
    if upstream.get("status") in ACTIVE:
        values["status"] = upstream["status"]
    if isinstance(upstream.get("hyperparameters"), dict):
        values["hyperparameters"] = upstream["hyperparameters"]
    return values


def _is_transient(exc: StillroomError) -> bool:
    if isinstance(exc, UpstreamError):
        return exc.status >= 500 or (exc.status == 429 and _upstream_error(exc).get("code") != "insufficient_quota")
    return isinstance(exc, GatewayTimeoutError) or (
        isinstance(exc, BadGatewayError) and exc.code != "upstream_auth_failed"
    )


def _upstream_error(exc: UpstreamError) -> dict[str, Any]:
    try:
        envelope = orjson.loads(exc.body)
    except orjson.JSONDecodeError:
        return {}
    error = envelope.get("error") if isinstance(envelope, dict) else None
    return error if isinstance(error, dict) else {}


def _reason(exc: StillroomError) -> str:
    if isinstance(exc, UpstreamError):
        return f"HTTP {exc.status}: {_upstream_error(exc).get('message') or 'no message'}"
    return exc.message


def _failure(exc: StillroomError, host: str) -> JobFailed:
    if isinstance(exc, UpstreamError):
        error = _upstream_error(exc)
        code = str(error.get("code") or "upstream_error")
        return JobFailed(code, f"The upstream {host} refused the job: {_reason(exc)}", error.get("param"))
    return JobFailed(exc.code or "upstream_error", exc.message)

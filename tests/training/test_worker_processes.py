"""Worker processes (`stillroom worker`) running the real trainer on the tiny model: one killed with SIGKILL
mid-job (another takes the job over, never leaving it `running`), cancel during a real run, and two
processes racing for one PostgreSQL queue (each job runs once)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from stillroom.files import Upload
from stillroom.store import jobs as job_store
from stillroom.store.blobs import LocalFileStorage
from stillroom.store.projects import direct_writes
from stillroom.training import jobs
from tests.jobs_db import migrated
from tests.live import start_worker, stop_process
from tests.training.conftest import planted_examples
from tests.training.test_end_to_end import TINY, tiny_config, wait_for

pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"


def _engine(url: str) -> Iterator[Engine]:
    engine = migrated(url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from _engine(db_url)


@pytest.fixture
def pg_engine(own_postgres_url: str) -> Iterator[Engine]:
    yield from _engine(own_postgres_url)


def _create_job(engine: Engine, files_dir: Path, project: str, n_epochs: int, batch_size: int = 1) -> str:
    pending = Upload(LocalFileStorage(files_dir), "fine-tune", "train.jsonl", 1 << 20)
    pending.write(b"".join(orjson.dumps(e) + b"\n" for e in planted_examples(12)))
    training = pending.finish(direct_writes(engine), project).id
    hyperparameters = {"n_epochs": n_epochs, "batch_size": batch_size}
    body = {
        "model": TINY,
        "training_file": training,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
    return str(jobs.create_job(engine, direct_writes(engine), project, body, [TINY])["id"])


def _events(engine: Engine, project: str, job_id: str) -> list[dict[str, Any]]:
    return list(reversed(jobs.list_events(engine, project, job_id, after=None, limit="100")["data"]))


def _steps_after(events: list[dict[str, Any]], marker: str) -> list[int]:
    """Training steps reported after the last event whose message contains `marker`."""
    start = max((i for i, e in enumerate(events) if marker in e["message"]), default=len(events))
    return [e["data"]["step"] for e in events[start:] if e["type"] == "metrics"]


def test_a_killed_worker_is_taken_over_and_cancel_stops_real_training(
    engine: Engine, db_url: str, files_dir: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _create_job(engine, files_dir, project, n_epochs=25)  # 300 steps: far longer than the test
    env = {"STILLROOM_FILES_DIR": str(files_dir), "STILLROOM_JOB_LEASE_SECONDS": "2"}
    doomed, doomed_log = start_worker(tmp_path, db_url, config=tiny_config(tiny_gguf), env=env, name="doomed")
    try:
        wait_for(lambda: _steps_after(_events(engine, project, job_id), "job started"), what="the first step")
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    killed = job_store.get_job(engine, project, job_id)
    assert killed is not None and killed.status == "running" and killed.worker_id is not None

    heir, heir_log = start_worker(tmp_path, db_url, config=tiny_config(tiny_gguf), env=env, name="heir")
    try:
        wait_for(
            lambda: _steps_after(_events(engine, project, job_id), "stopped sending heartbeats"),
            what="the job training again on the second worker",
        )
        taken = job_store.get_job(engine, project, job_id)
        assert taken is not None and taken.status == "running" and taken.attempts == 2
        assert taken.worker_id != killed.worker_id
        takeover = next(e for e in _events(engine, project, job_id) if "stopped sending heartbeats" in e["message"])
        assert takeover["level"] == "warn" and killed.worker_id in takeover["message"]

        assert jobs.cancel_job(engine, direct_writes(engine), project, job_id)["status"] == "cancelled"
        stopped = wait_for(
            lambda: next(
                (e for e in _events(engine, project, job_id) if e["message"].startswith("Training stopped")), None
            ),
            timeout=30,
            what="training stopping after the cancel",
        )
        assert stopped["message"].endswith("the job was cancelled"), heir_log.read_text()[-2000:]
        assert heir.poll() is None  # the worker lives on, waiting for the next job
    finally:
        stop_process(heir)
    final = jobs.retrieve_job(engine, project, job_id)
    assert final["status"] == "cancelled" and final["fine_tuned_model"] is None and final["result_files"] == []
    assert "Traceback" not in heir_log.read_text(), heir_log.read_text()[-2000:]
    assert "de-quantizing" not in heir_log.read_text()  # transformers' GGUF progress bar: silenced in the worker
    assert doomed_log.exists()


def test_two_worker_processes_on_postgres_run_each_job_once(
    pg_engine: Engine, own_postgres_url: str, files_dir: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    ids = [_create_job(pg_engine, files_dir, project, n_epochs=1, batch_size=6) for _ in range(4)]  # 2 steps each
    env = {"STILLROOM_FILES_DIR": str(files_dir), "STILLROOM_JOB_LEASE_SECONDS": "5"}
    workers = [
        start_worker(tmp_path, own_postgres_url, config=tiny_config(tiny_gguf), env=env, name=f"racer-{i}")
        for i in range(2)
    ]
    try:
        wait_for(
            lambda: all(jobs.retrieve_job(pg_engine, project, i)["status"] in job_store.TERMINAL for i in ids),
            timeout=300,
            what="every job ending",
        )
    finally:
        for process, _ in workers:
            stop_process(process)
    logs = "".join(log.read_text() for _, log in workers)
    assert {jobs.retrieve_job(pg_engine, project, i)["status"] for i in ids} == {"succeeded"}, logs[-3000:]
    for job_id in ids:
        messages = [e["message"] for e in _events(pg_engine, project, job_id)]
        assert messages.count("Fine-tuning job started") == 1
        assert not any("stopped sending heartbeats" in m for m in messages)
        assert sum(1 for m in messages if m.startswith("Step ")) == 2

"""The files a job leaves: each checkpoint's zipped adapter kept as a result file (past the quota: a warning,
the run goes on), deleted when the job fails or is cancelled (by its own worker, or by the next worker when
none held it), and an earlier run's checkpoints dropped when a job starts again. The runner is the named fake
trainer of test_worker.py; the real trainer's checkpoint files are checked through the SDK in
test_end_to_end.py."""

from __future__ import annotations

import io
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from stillroom.store import files as file_store
from stillroom.store import job_queue as queue
from stillroom.store import jobs as job_store
from stillroom.store import projects as project_store
from stillroom.store.blobs import LocalFileStorage
from stillroom.store.projects import direct_writes
from stillroom.training import jobs
from stillroom.training.results import keep_checkpoint_adapter
from stillroom.training.worker import RunContext, RunResult
from tests.jobs_db import migrated
from tests.training.test_worker import BASE, MODELS, FakeTrainer, upload, worker


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = migrated(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def storage(tmp_path: Path) -> LocalFileStorage:
    return LocalFileStorage(tmp_path / "files")


def _job(engine: Engine, storage: LocalFileStorage, project: str) -> str:
    training = upload(engine, storage, project, 12)
    body = {"model": BASE, "training_file": training}
    return str(jobs.create_job(engine, direct_writes(engine), project, body, MODELS)["id"])


def _checkpoints(engine: Engine, project: str, job_id: str) -> list[dict[str, Any]]:
    page = jobs.list_checkpoints(engine, project, job_id, after=None, limit="100")
    return sorted(page["data"], key=lambda c: c["step_number"])


def _messages(engine: Engine, project: str, job_id: str) -> list[tuple[str, str]]:
    page = jobs.list_events(engine, project, job_id, after=None, limit="100")
    return [(e["level"], e["message"]) for e in reversed(page["data"])]


def _exists(engine: Engine, project: str, file_id: str) -> bool:
    return file_store.get_file(engine, project, file_id) is not None


def test_each_checkpoint_s_adapter_is_a_result_file_of_the_project(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _job(engine, storage, project)
    w = worker(engine, storage, FakeTrainer(steps=4, checkpoints=(2,)), tmp_path)
    assert w.run_once() and w.run_once()
    done = jobs.retrieve_job(engine, project, job_id)
    assert done["status"] == "succeeded"
    checkpoints = _checkpoints(engine, project, job_id)
    assert [c["step_number"] for c in checkpoints] == [2, 4]
    for checkpoint in checkpoints:
        (file_id,) = checkpoint["result_files"]
        row = file_store.get_file(engine, project, file_id)
        assert row is not None and row.purpose == "fine-tune-results"
        assert row.filename == f"{job_id}-ckpt-step-{checkpoint['step_number']}-adapter.zip"
        assert checkpoint["fine_tuned_model_checkpoint"].endswith(f":ckpt-step-{checkpoint['step_number']}")
        with zipfile.ZipFile(io.BytesIO(storage.local_path(row.storage_key).read_bytes())) as zipped:
            assert sorted(zipped.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert file_id not in done["result_files"]  # the job's own result files are the final ones


def test_a_checkpoint_past_the_quota_is_a_warning_and_the_job_goes_on(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _job(engine, storage, project)
    used = project_store.get_project(engine, project)
    assert used is not None
    # Room for the final result files (under 1 kB) but not for a 64 kB checkpoint adapter.
    direct_writes(engine)(
        lambda conn: project_store.update_project(conn, project, {"quota_bytes": used.used_bytes + 4096})
    )
    w = worker(engine, storage, FakeTrainer(steps=3, checkpoint_bytes=65536), tmp_path)
    assert w.run_once() and w.run_once()
    done = jobs.retrieve_job(engine, project, job_id)
    assert done["status"] == "succeeded" and len(done["result_files"]) == 3
    (checkpoint,) = _checkpoints(engine, project, job_id)
    assert checkpoint["step_number"] == 3 and checkpoint["result_files"] == []
    warnings = [m for level, m in _messages(engine, project, job_id) if level == "warn"]
    assert len(warnings) == 1 and warnings[0].startswith("The adapter of the checkpoint at step 3 was not kept")
    assert "quota" in warnings[0]


def test_a_cancel_deletes_the_checkpoint_files_and_keeps_the_checkpoints(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _job(engine, storage, project)
    runner = FakeTrainer(steps=10_000, step_seconds=0.01, checkpoints=(1,))
    w = worker(engine, storage, runner, tmp_path, lease_seconds=1.5)
    assert w.run_once()
    thread = threading.Thread(target=w.run_once)
    thread.start()
    assert runner.checkpointed.wait(30)
    (file_id,) = _checkpoints(engine, project, job_id)[0]["result_files"]
    assert _exists(engine, project, file_id)
    jobs.cancel_job(engine, direct_writes(engine), project, job_id)
    thread.join(30)
    assert not thread.is_alive()
    assert not _exists(engine, project, file_id)
    (checkpoint,) = _checkpoints(engine, project, job_id)
    assert checkpoint["step_number"] == 1 and checkpoint["result_files"] == []
    ended = job_store.get_job(engine, project, job_id)
    assert ended is not None and ended.status == "cancelled"
    assert ended.worker_id is None and ended.lease_expires_at is None  # wound down: nothing left to do


class _FailingTrainer(FakeTrainer):
    def run(self, context: RunContext) -> RunResult:
        self._checkpoint(context, 1)
        raise RuntimeError("the trainer broke after its first epoch")


def test_a_failed_job_keeps_no_checkpoint_files(engine: Engine, storage: LocalFileStorage, tmp_path: Path) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _job(engine, storage, project)
    files_before = file_store.count_files(engine)
    w = worker(engine, storage, _FailingTrainer(), tmp_path)
    assert w.run_once() and w.run_once()
    failed = jobs.retrieve_job(engine, project, job_id)
    assert failed["status"] == "failed" and "broke" in failed["error"]["message"]
    (checkpoint,) = _checkpoints(engine, project, job_id)
    assert checkpoint["result_files"] == []
    assert file_store.count_files(engine) == files_before


def _lose_a_worker_with_a_checkpoint(engine: Engine, storage: LocalFileStorage, project: str, job_id: str) -> str:
    """A worker claims the job, runs it to a checkpoint with its file, and dies (its lease runs out in 0.3 s)."""
    writes = direct_writes(engine)
    assert queue.claim_job(writes, "doomed", lease_seconds=0.3, now=time.time()) is not None
    assert queue.update_held_job(writes, job_id, "doomed", {"status": "running", "attempts": 1})
    folder = storage.root.parent / f"doomed-{job_id}" / "step-1"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (file_id,) = keep_checkpoint_adapter(writes, storage, project, job_id, 1, folder)
    checkpoint = job_store.CheckpointRow(f"ftckpt_{uuid.uuid4().hex}", job_id, 0, 1, {}, "ckpt", [file_id])
    assert queue.add_held_checkpoint(writes, "doomed", checkpoint, jobs.new_event(job_id, "Checkpoint"))
    return file_id


def test_a_job_cancelled_while_its_worker_is_lost_is_wound_down_by_the_next_worker(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _job(engine, storage, project)
    survivor = worker(engine, storage, FakeTrainer(), tmp_path)
    assert survivor.run_once()  # validated
    file_id = _lose_a_worker_with_a_checkpoint(engine, storage, project, job_id)
    jobs.cancel_job(engine, direct_writes(engine), project, job_id)
    assert not survivor.run_once()  # the lost worker's lease has not run out: it might still wind it down
    time.sleep(0.4)
    assert survivor.run_once()  # the wind-down
    assert not _exists(engine, project, file_id)
    ended = job_store.get_job(engine, project, job_id)
    assert ended is not None and ended.status == "cancelled" and ended.worker_id is None
    assert not survivor.run_once()  # once


def test_a_job_cancelled_before_any_worker_ran_it_has_nothing_to_wind_down(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _job(engine, storage, project)
    jobs.cancel_job(engine, direct_writes(engine), project, job_id)
    ended = job_store.get_job(engine, project, job_id)
    assert ended is not None and ended.lease_expires_at is None
    assert queue.claim_wind_down(direct_writes(engine), "w", lease_seconds=5, now=time.time() + 60) is None


def test_a_job_that_starts_again_drops_the_earlier_run_s_checkpoints(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    job_id = _job(engine, storage, project)
    survivor = worker(engine, storage, FakeTrainer(), tmp_path, lease_seconds=0.3)
    assert survivor.run_once()
    file_id = _lose_a_worker_with_a_checkpoint(engine, storage, project, job_id)
    time.sleep(0.4)
    assert survivor.run_once()  # taken over, trained from the start
    assert jobs.retrieve_job(engine, project, job_id)["status"] == "succeeded"
    assert not _exists(engine, project, file_id)
    assert [c["step_number"] for c in _checkpoints(engine, project, job_id)] == [3]

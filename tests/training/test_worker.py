"""The job queue: validation, runs, cancel, lost workers and racing workers, with the runner injected (a
named fake trainer, so that these tests measure the queue and not training)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from stillroom.config import ModelConfig
from stillroom.errors import BadRequestError
from stillroom.files import Upload
from stillroom.store import files as file_store
from stillroom.store import job_queue as queue
from stillroom.store import jobs as job_store
from stillroom.store import projects as project_store
from stillroom.store.blobs import LocalFileStorage
from stillroom.store.projects import direct_writes
from stillroom.training import jobs
from stillroom.training.worker import JobCancelled, RunContext, RunResult, Worker
from tests.jobs_db import migrated

BASE = "smollm2-135m-instruct"
MODELS = {BASE: ModelConfig(name=BASE, provider="local")}


class FakeTrainer:
    """Stands in for the trainer: `steps` steps of `step_seconds`, a checkpoint (a PEFT-like adapter folder of
    `checkpoint_bytes`) after each step in `checkpoints` and at the end, result files."""

    def __init__(
        self, steps: int = 3, step_seconds: float = 0.0, checkpoints: tuple[int, ...] = (), checkpoint_bytes: int = 64
    ) -> None:
        self.steps = steps
        self.step_seconds = step_seconds
        self.checkpoints = set(checkpoints) | {steps}
        self.checkpoint_bytes = checkpoint_bytes
        self.runs: list[str] = []
        self.started = threading.Event()
        self.checkpointed = threading.Event()

    def resolve_hyperparameters(self, context: RunContext) -> dict[str, Any]:
        asked = context.job.method["supervised"]["hyperparameters"]
        return {
            k: (3 if v == "auto" and k != "learning_rate_multiplier" else 1.0 if v == "auto" else v)
            for k, v in asked.items()
        }

    def run(self, context: RunContext) -> RunResult:
        self.runs.append(context.job.id)
        self.started.set()
        for step in range(1, self.steps + 1):
            if context.should_stop():
                raise JobCancelled(f"stopped at {step}")
            time.sleep(self.step_seconds)
            context.on_event(
                {
                    "type": "metrics",
                    "level": "info",
                    "message": f"Step {step}/{self.steps}",
                    "data": {
                        "step": step,
                        "total_steps": self.steps,
                        "train_loss": 2.0 / step,
                        "eta_seconds": (self.steps - step) * self.step_seconds,
                    },
                }
            )
            if step in self.checkpoints:
                self._checkpoint(context, step)
        csv = context.output_dir / "metrics.csv"
        csv.write_text("step,train_loss\n1,2.0\n")
        adapter = context.output_dir / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        gguf = context.output_dir / "student.gguf"
        gguf.write_bytes(b"GGUF")
        return RunResult(
            context.job.hyperparameters or {}, trained_tokens=123, metrics_csv=csv, adapter_dir=adapter, gguf_path=gguf
        )

    def _checkpoint(self, context: RunContext, step: int) -> None:
        folder = context.output_dir / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text('{"r": 16}')
        (folder / "adapter_model.safetensors").write_bytes(bytes(self.checkpoint_bytes))
        metrics = {"step": step, "train_loss": 2.0 / step}
        context.on_event({"type": "checkpoint", "step_number": step, "metrics": metrics, "path": folder})
        self.checkpointed.set()


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = migrated(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def storage(tmp_path: Path) -> LocalFileStorage:
    return LocalFileStorage(tmp_path / "files")


def _example(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def upload(engine: Engine, storage: LocalFileStorage, project: str, n: int) -> str:
    pending = Upload(storage, "fine-tune", "train.jsonl", 1 << 20)
    pending.write(b"".join(orjson.dumps(_example(i)) + b"\n" for i in range(n)))
    return pending.finish(direct_writes(engine), project).id


def new_job(engine: Engine, storage: LocalFileStorage, n: int = 10, **body: Any) -> tuple[str, dict[str, Any]]:
    """A job (on `BASE`, a file of `n` examples, and `body`'s other fields) in a new project: (project, job)."""
    project = uuid.uuid4().hex[:12]
    body = {"model": BASE, "training_file": upload(engine, storage, project, n), **body}
    return project, jobs.create_job(engine, direct_writes(engine), project, body, MODELS)


def worker(engine: Engine, storage: LocalFileStorage, runner: FakeTrainer, tmp_path: Path, **kw: Any) -> Worker:
    return Worker(engine, storage, MODELS, runner, work_dir=tmp_path / "work", **kw)


def _events(engine: Engine, project: str, job_id: str) -> list[str]:
    page = jobs.list_events(engine, project, job_id, after=None, limit="100")
    return [e["message"] for e in reversed(page["data"])]


def test_a_job_is_validated_queued_run_and_registers_its_model(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project, created = new_job(engine, storage, 12, suffix="pirate", seed=5)
    assert created["status"] == "validating_files"
    assert created["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    runner = FakeTrainer()
    w = worker(engine, storage, runner, tmp_path)
    assert w.run_once()
    queued = jobs.retrieve_job(engine, project, created["id"])
    assert queued["status"] == "queued"
    assert queued["hyperparameters"] == {"n_epochs": 3, "batch_size": 3, "learning_rate_multiplier": 1.0}
    assert w.run_once()
    done = jobs.retrieve_job(engine, project, created["id"])
    assert done["status"] == "succeeded" and done["trained_tokens"] == 123 and done["finished_at"]
    assert done["fine_tuned_model"] == f"ft:{BASE}:{project}:pirate:{created['id']}"
    assert len(done["result_files"]) == 3
    model = job_store.get_model(engine, done["fine_tuned_model"])
    assert model is not None and model.gguf_file == done["result_files"][2]
    assert storage.local_path(model.gguf_file).read_bytes() == b"GGUF"
    messages = _events(engine, project, created["id"])
    assert messages[:4] == [
        f"Created fine-tuning job: {created['id']}",
        "Validated training file: 12 examples",
        "Job enqueued",
        "Fine-tuning job started",
    ]
    assert "Step 3/3" in messages and messages[-1] == "The job has successfully completed"
    checkpoints = jobs.list_checkpoints(engine, project, created["id"], after=None, limit=None)["data"]
    assert [c["fine_tuned_model_checkpoint"] for c in checkpoints] == [f"{done['fine_tuned_model']}:ckpt-step-3"]
    assert not w.run_once()  # nothing left


def test_too_few_examples_fail_the_job_with_openais_code(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project, created = new_job(engine, storage, 3)
    runner = FakeTrainer()
    assert worker(engine, storage, runner, tmp_path).run_once()
    failed = jobs.retrieve_job(engine, project, created["id"])
    assert failed["status"] == "failed" and runner.runs == []
    assert failed["error"] == {
        "code": "invalid_n_examples",
        "param": "training_file",
        "message": "Training file has 3 example(s), but must have at least 10 examples",
    }


def test_cancel_stops_a_running_job_within_seconds(engine: Engine, storage: LocalFileStorage, tmp_path: Path) -> None:
    project, created = new_job(engine, storage)
    runner = FakeTrainer(steps=10_000, step_seconds=0.01)
    w = worker(engine, storage, runner, tmp_path, lease_seconds=1.5)
    assert w.run_once()  # validation
    thread = threading.Thread(target=w.run_once)
    thread.start()
    assert runner.started.wait(30)
    cancelled = jobs.cancel_job(engine, direct_writes(engine), project, created["id"])
    assert cancelled["status"] == "cancelled"
    thread.join(30)
    assert not thread.is_alive()
    final = jobs.retrieve_job(engine, project, created["id"])
    assert final["status"] == "cancelled" and final["fine_tuned_model"] is None and final["result_files"] == []
    assert any(m.startswith("Training stopped at step") for m in _events(engine, project, created["id"]))


def test_a_lost_workers_job_is_taken_over_then_failed_after_the_last_attempt(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project, created = new_job(engine, storage)
    survivor = worker(engine, storage, FakeTrainer(), tmp_path, lease_seconds=0.3, max_attempts=2)
    assert survivor.run_once()  # validated and queued
    for attempt in (1, 2):  # a worker claims the job, starts it, and dies without another heartbeat
        assert (
            queue.claim_job(direct_writes(engine), f"doomed-{attempt}", lease_seconds=0.3, now=time.time()) is not None
        )
        assert queue.update_held_job(
            direct_writes(engine), created["id"], f"doomed-{attempt}", {"status": "running", "attempts": attempt}
        )
        assert not survivor.run_once()  # its lease has not run out yet
        time.sleep(0.4)
    assert survivor.run_once()
    failed = jobs.retrieve_job(engine, project, created["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"
    assert "doomed-2" in failed["error"]["message"]


def test_a_lost_workers_job_runs_again_elsewhere(engine: Engine, storage: LocalFileStorage, tmp_path: Path) -> None:
    project, created = new_job(engine, storage)
    runner = FakeTrainer()
    survivor = worker(engine, storage, runner, tmp_path, lease_seconds=0.3)
    assert survivor.run_once()
    assert queue.claim_job(direct_writes(engine), "doomed", lease_seconds=0.3, now=time.time()) is not None
    assert queue.update_held_job(direct_writes(engine), created["id"], "doomed", {"status": "running", "attempts": 1})
    time.sleep(0.4)
    assert survivor.run_once()
    assert jobs.retrieve_job(engine, project, created["id"])["status"] == "succeeded"
    assert any("doomed stopped sending heartbeats" in m for m in _events(engine, project, created["id"]))


def test_racing_workers_run_each_job_once(engine: Engine, storage: LocalFileStorage, tmp_path: Path) -> None:
    project = uuid.uuid4().hex[:12]
    training = upload(engine, storage, project, 10)
    ids = {
        jobs.create_job(engine, direct_writes(engine), project, {"model": BASE, "training_file": training}, MODELS)[
            "id"
        ]
        for _ in range(8)
    }
    runners = [FakeTrainer(steps=2) for _ in range(4)]
    workers = [worker(engine, storage, r, tmp_path / str(i)) for i, r in enumerate(runners)]

    def drain(w: Worker) -> None:
        idle = 0
        while idle < 3:
            idle = 0 if w.run_once() else idle + 1

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    ran = [job_id for r in runners for job_id in r.runs]
    assert sorted(ran) == sorted(ids)
    assert {jobs.retrieve_job(engine, project, i)["status"] for i in ids} == {"succeeded"}


def test_validation_examples_that_repeat_training_ones_fail_the_job(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    training = upload(engine, storage, project, 12)
    pending = Upload(storage, "fine-tune", "valid.jsonl", 1 << 20)
    reordered = {"messages": [{"content": "q7", "role": "user"}, {"content": "a7", "role": "assistant"}]}
    pending.write(orjson.dumps(_example(50)) + b"\n" + json.dumps(reordered).encode() + b"\n")
    validation = pending.finish(direct_writes(engine), project).id
    body = {"model": BASE, "training_file": training, "validation_file": validation}
    created = jobs.create_job(engine, direct_writes(engine), project, body, MODELS)
    runner = FakeTrainer()
    assert worker(engine, storage, runner, tmp_path).run_once()
    failed = jobs.retrieve_job(engine, project, created["id"])
    assert failed["status"] == "failed" and runner.runs == []
    assert failed["error"]["code"] == "invalid_validation_file" and failed["error"]["param"] == "validation_file"
    assert "shares 1 example(s)" in failed["error"]["message"] and "line 2" in failed["error"]["message"]


def test_the_training_file_as_its_own_validation_file_is_refused(engine: Engine, storage: LocalFileStorage) -> None:
    project = uuid.uuid4().hex[:12]
    training = upload(engine, storage, project, 12)
    before = job_store.count_jobs(engine)
    with pytest.raises(BadRequestError) as raised:
        jobs.create_job(
            engine,
            direct_writes(engine),
            project,
            {"model": BASE, "training_file": training, "validation_file": training},
            MODELS,
        )
    assert raised.value.param == "validation_file" and raised.value.code == "invalid_validation_file"
    assert job_store.count_jobs(engine) == before


def test_result_files_past_the_quota_fail_the_job_and_none_are_kept(
    engine: Engine, storage: LocalFileStorage, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    training = upload(engine, storage, project, 10)
    used = project_store.get_project(engine, project)
    assert used is not None
    direct_writes(engine)(
        lambda conn: project_store.update_project(conn, project, {"quota_bytes": used.used_bytes + 30})
    )
    files_before = file_store.count_files(engine)
    created = jobs.create_job(
        engine, direct_writes(engine), project, {"model": BASE, "training_file": training}, MODELS
    )
    w = worker(engine, storage, FakeTrainer(), tmp_path)
    assert w.run_once() and w.run_once()
    failed = jobs.retrieve_job(engine, project, created["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "quota_exceeded"
    assert failed["result_files"] == [] and failed["fine_tuned_model"] is None
    assert file_store.count_files(engine) == files_before
    after = project_store.get_project(engine, project)
    assert after is not None and after.used_bytes == used.used_bytes

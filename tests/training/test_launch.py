"""Training on two processes through `accelerate launch` (`training/launch.py`), on this CPU-only machine
(gloo): a job on the tiny model run by a worker to success, against the same run in one process (the same
losses, every example once per epoch, one set of checkpoints and files), and a cancel of a real `stillroom
worker`'s two-process run, which ends the launcher's whole process group within seconds."""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from stillroom.config import ModelConfig
from stillroom.files import Upload
from stillroom.store.blobs import LocalFileStorage
from stillroom.store.projects import direct_writes
from stillroom.training import jobs
from stillroom.training.examples import tokenize_file
from stillroom.training.launch import train_launched
from stillroom.training.runner import LocalTrainer
from stillroom.training.trainer import MICRO_BATCH_TOKENS, TrainConfig, load_base, train
from stillroom.training.worker import Worker
from tests.jobs_db import migrated
from tests.live import start_worker, stop_process
from tests.training.conftest import planted_examples, write_jsonl
from tests.training.test_end_to_end import TINY, tiny_config, wait_for

pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")
pytest.importorskip("accelerate", reason="several processes need accelerate (the `train` extra)")


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SQLite only: what is under test is the launch, not the queue (test_worker*.py run it on both backends)."""
    return f"sqlite:///{tmp_path_factory.mktemp('launch') / 'stillroom.db'}"


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = migrated(db_url)
    yield eng
    eng.dispose()


def _job(engine: Engine, storage: LocalFileStorage, project: str, n: int, **hyperparameters: Any) -> str:
    pending = Upload(storage, "fine-tune", "train.jsonl", 1 << 20)
    pending.write(b"".join(orjson.dumps(e) + b"\n" for e in planted_examples(n)))
    training = pending.finish(direct_writes(engine), project).id
    body = {
        "model": TINY,
        "training_file": training,
        "seed": 7,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
    return str(jobs.create_job(engine, direct_writes(engine), project, body, [TINY])["id"])


def _events(engine: Engine, project: str, job_id: str) -> list[dict[str, Any]]:
    return list(reversed(jobs.list_events(engine, project, job_id, after=None, limit="100")["data"]))


def _launched_processes(job_id: str) -> list[str]:
    """Command lines of live processes started for this job's launch (their spec file is under its folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "stillroom.training.launch" in text and job_id in text:
            found.append(text)
    return found


def test_a_two_process_job_trains_like_one_process(engine: Engine, tiny_gguf: Path, tmp_path: Path) -> None:
    project = uuid.uuid4().hex[:12]
    storage = LocalFileStorage(tmp_path / "files")
    job_id = _job(engine, storage, project, 12, n_epochs=2, batch_size=5, learning_rate_multiplier=20.0)
    models = {TINY: ModelConfig(name=TINY, provider="local", path=tiny_gguf)}
    worker = Worker(engine, storage, models, LocalTrainer(processes=2), work_dir=tmp_path / "work")
    assert worker.run_once()  # validated and queued
    began = time.monotonic()
    assert worker.run_once()
    launched_s = time.monotonic() - began

    done = jobs.retrieve_job(engine, project, job_id)
    assert done["status"] == "succeeded", done["error"]
    assert len(done["result_files"]) == 3  # metrics CSV, adapter, student GGUF: written once, by the main process
    rows = list(csv.DictReader(storage.local_path(done["result_files"][0]).read_text().splitlines()))
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 7)]
    checkpoints = jobs.list_checkpoints(engine, project, job_id, after=None, limit=None)["data"]
    assert sorted(c["step_number"] for c in checkpoints) == [3, 6]
    events = _events(engine, project, job_id)
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 7))  # each step reported once
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 1.0
    assert not _launched_processes(job_id)

    # The same run in one process: the same losses, and the same tokens (each example once per epoch).
    one: list[dict[str, Any]] = []
    began = time.monotonic()
    config = TrainConfig(
        tiny_gguf, storage.local_path(jobs.retrieve_job(engine, project, job_id)["training_file"]), None,
        tmp_path / "one", n_epochs=2, batch_size=5, learning_rate_multiplier=20.0, seed=7,
    )  # fmt: skip
    result = train(config, on_event=one.append, should_stop=lambda: False)
    in_process_s = time.monotonic() - began
    tokens = next(int(e["message"].split("(")[1].split()[0]) for e in one if "training examples" in e["message"])
    assert done["trained_tokens"] == result.trained_tokens == 2 * tokens
    single = [e["data"]["train_loss"] for e in one if e["type"] == "metrics"]
    assert [m["train_loss"] for m in metrics] == pytest.approx(single, rel=1e-3)
    print(f"\n6 steps: 2 processes {launched_s:.1f} s (with their start), 1 process {in_process_s:.1f} s")


def test_uneven_micro_batches_and_an_empty_share_train_like_one_process(tiny_gguf: Path, tmp_path: Path) -> None:
    """Long examples: of a batch of 11, one process takes 6 (two micro-batches), the other 5 (one), and the
    last example of the epoch leaves the second process nothing; the gradients still sum right."""
    examples = planted_examples(12)
    for example in examples:
        example["messages"][0]["content"] += " It is long." * 170
    training = write_jsonl(tmp_path / "long.jsonl", examples)
    _, tokenizer = load_base(tiny_gguf)
    lengths = [len(e.input_ids) for e in tokenize_file(tokenizer, training, 1024)]
    assert max(lengths) * 5 <= MICRO_BATCH_TOKENS < min(lengths) * 6  # any 5 fit one micro-batch, no 6 do

    def config(out: str) -> TrainConfig:
        return TrainConfig(tiny_gguf, training, None, tmp_path / out, 2, 11, 20.0, seed=3)

    two: list[dict[str, Any]] = []
    launched = train_launched(config("two"), processes=2, on_event=two.append, should_stop=lambda: False)
    one: list[dict[str, Any]] = []
    single = train(config("one"), on_event=one.append, should_stop=lambda: False)
    losses = [[e["data"]["train_loss"] for e in events if e["type"] == "metrics"] for events in (two, one)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-3)
    assert launched.trained_tokens == single.trained_tokens
    assert [c.name for c in launched.checkpoints] == ["step-2", "step-4"]


def test_cancel_ends_a_two_process_run_of_a_worker_process(
    engine: Engine, db_url: str, tiny_gguf: Path, tmp_path: Path
) -> None:
    project = uuid.uuid4().hex[:12]
    files = tmp_path / "files"
    job_id = _job(engine, LocalFileStorage(files), project, 12, n_epochs=25, batch_size=1)  # 300 steps
    env = {
        "STILLROOM_FILES_DIR": str(files),
        "STILLROOM_JOB_LEASE_SECONDS": "2",
        "STILLROOM_TRAINING_PROCESSES": "2",
    }
    worker, log = start_worker(tmp_path, db_url, config=tiny_config(tiny_gguf), env=env)
    try:
        wait_for(
            lambda: any(e["type"] == "metrics" for e in _events(engine, project, job_id)),
            what="the first step",
        )
        assert len(_launched_processes(job_id)) >= 3  # the launcher and its two training processes
        cancelled = time.monotonic()
        assert jobs.cancel_job(engine, direct_writes(engine), project, job_id)["status"] == "cancelled"
        wait_for(lambda: not _launched_processes(job_id), timeout=30, what="the launched processes ending")
        stopped_s = time.monotonic() - cancelled
        stopped = wait_for(
            lambda: next((e for e in _events(engine, project, job_id) if "Training stopped" in e["message"]), None),
            timeout=30,
            what="the stop event",
        )
        assert stopped["message"].endswith("the job was cancelled"), log.read_text()[-2000:]
        assert worker.poll() is None
    finally:
        stop_process(worker)
    assert stopped_s < 10, stopped_s
    final = jobs.retrieve_job(engine, project, job_id)
    assert final["status"] == "cancelled" and final["result_files"] == []
    assert "Traceback" not in log.read_text(), log.read_text()[-2000:]
    print(f"\ncancel -> launched processes gone in {stopped_s:.1f} s")

"""The whole loop with the real trainer, on both databases: a file uploaded and a job created through the
openai SDK, trained by the worker process of one `stillroom serve` on a tiny model the test builds (as a GGUF,
and as a Hugging Face model folder whose student is converted to GGUF), and the student answering through chat
completions on a second `serve` process that shares the database and the files folder (and runs no worker of
its own)."""

from __future__ import annotations

import csv
import io
import os
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.live import LiveServer, start_server
from tests.training.conftest import planted_examples, write_jsonl

pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")

TINY = "tiny-llama"
FOLDER = "tiny-llama-folder"  # a Hugging Face model folder: trained, its students served, itself not served


@dataclass
class Pair:
    trainer: LiveServer  # serves and runs the worker process
    other: LiveServer  # serves only (--no-worker), same database and files


def wait_for(predicate: Callable[[], Any], timeout: float = 180, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what} not met in {timeout} s")


def tiny_config(tiny_gguf: Path) -> str:
    return f'[[models]]\nname = "{TINY}"\nprovider = "local"\npath = "{tiny_gguf}"\nn_ctx = 512\n'


@pytest.fixture(scope="module")
def pair(
    open_db_url: str, tiny_gguf: Path, llama_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("e2e")
    env = {"STILLROOM_FILES_DIR": str(tmp / "files"), "STILLROOM_JOB_LEASE_SECONDS": "5"}
    config = tiny_config(tiny_gguf) + f'[[models]]\nname = "{FOLDER}"\nprovider = "local"\npath = "{llama_folder}"\n'
    trainer = start_server(tmp, open_db_url, config=config, env=env, name="trainer")
    try:
        other = start_server(tmp, open_db_url, config=config, env=env, name="other", extra_args=("--no-worker",))
    except BaseException:
        trainer.stop()
        raise
    yield Pair(trainer, other)
    other.stop()
    trainer.stop()


def _sdk(server: LiveServer, project: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", project=project, max_retries=0)


def test_a_job_trains_for_real_and_its_model_answers_on_another_server(pair: Pair, tmp_path: Path) -> None:
    with _sdk(pair.trainer) as sdk, _sdk(pair.other) as other:
        training = sdk.files.create(
            file=write_jsonl(tmp_path / "train.jsonl", planted_examples(12)), purpose="fine-tune"
        )
        validation = sdk.files.create(
            file=write_jsonl(tmp_path / "valid.jsonl", planted_examples(4, offset=40)), purpose="fine-tune"
        )
        job = sdk.fine_tuning.jobs.create(
            model=TINY,
            training_file=training.id,
            validation_file=validation.id,
            suffix="colours",
            seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        )
        done = wait_for(
            lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
            what="the job ending",
        )
        assert done.status == "succeeded", (done.error, pair.trainer.log()[-3000:])
        assert "de-quantizing" not in pair.trainer.log()  # library progress bars stay out of serve's output
        assert done.fine_tuned_model == f"ft:{TINY}:default:colours:{job.id}"
        assert done.trained_tokens and done.trained_tokens > 0
        assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 4

        events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
        losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics" and e.data]
        assert len(losses) == 6 and all(loss > 0 for loss in losses)  # 12 examples / 4, two epochs
        assert events[0].message == "The job has successfully completed"

        checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
        assert sorted(c.step_number for c in checkpoints) == [3, 6]  # one per epoch
        assert all(c.metrics.valid_loss is not None for c in checkpoints)
        assert {c.fine_tuned_model_checkpoint for c in checkpoints} == {
            f"{done.fine_tuned_model}:ckpt-step-{n}" for n in (3, 6)
        }
        for checkpoint in checkpoints:  # each one's adapter, downloadable (Stillroom's `result_files` on it)
            (adapter_file,) = checkpoint.result_files  # type: ignore[attr-defined]
            assert sdk.files.retrieve(adapter_file).purpose == "fine-tune-results"
            with zipfile.ZipFile(io.BytesIO(other.files.content(adapter_file).content)) as zipped:
                assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zipped.namelist())

        files = {sdk.files.retrieve(f).filename: f for f in done.result_files}
        assert set(files) == {f"{job.id}-step_metrics.csv", f"{job.id}-adapter.zip", f"{job.id}.gguf"}
        rows = list(csv.DictReader(io.StringIO(sdk.files.content(files[f"{job.id}-step_metrics.csv"]).text)))
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
        with zipfile.ZipFile(io.BytesIO(other.files.content(files[f"{job.id}-adapter.zip"]).content)) as adapter:
            assert {"adapter_config.json", "adapter_model.safetensors"} <= set(adapter.namelist())
        assert other.files.content(files[f"{job.id}.gguf"]).content[:4] == b"GGUF"

        assert done.fine_tuned_model in [m.id for m in other.models.list()]
        answer = other.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "Which colour is item 99? It is red."}],
            max_tokens=8,
            temperature=0,
        )
        assert answer.model == done.fine_tuned_model
        assert answer.choices[0].message.content is not None and answer.usage is not None
        assert answer.usage.completion_tokens > 0
        with pytest.raises(openai.NotFoundError) as refused:  # checkpoints are downloadable, not served
            other.chat.completions.create(
                model=checkpoints[0].fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "Hi"}]
            )
        assert refused.value.code == "model_not_found"

    _another_project_cannot_see_or_use(pair.other, done.fine_tuned_model)


def test_a_job_on_a_model_folder_trains_and_its_student_answers(pair: Pair, tmp_path: Path) -> None:
    with _sdk(pair.trainer) as sdk, _sdk(pair.other) as other:
        training = sdk.files.create(
            file=write_jsonl(tmp_path / "train.jsonl", planted_examples(12)), purpose="fine-tune"
        )
        job = sdk.fine_tuning.jobs.create(
            model=FOLDER,
            training_file=training.id,
            seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        )
        done = wait_for(
            lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
            what="the job ending",
        )
        assert done.status == "succeeded", (done.error, pair.trainer.log()[-3000:])
        assert done.fine_tuned_model == f"ft:{FOLDER}:default::{job.id}"
        files = {sdk.files.retrieve(f).filename: f for f in done.result_files}
        assert set(files) == {f"{job.id}-step_metrics.csv", f"{job.id}-adapter.zip", f"{job.id}.gguf"}
        assert other.files.content(files[f"{job.id}.gguf"]).content[:4] == b"GGUF"

        answer = other.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "Which colour is item 99? It is red."}],
            max_tokens=8,
            temperature=0,
        )
        assert answer.model == done.fine_tuned_model
        assert answer.usage is not None and answer.usage.completion_tokens > 0
        with pytest.raises(openai.BadRequestError) as refused:  # the folder itself is not run by llama.cpp
            other.chat.completions.create(model=FOLDER, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert refused.value.code == "model_not_supported"


def _worker_children(pid: int) -> list[int]:
    """The `stillroom worker` processes whose parent is `pid` (from /proc: Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        if parent == pid and b"worker" in command:
            found.append(int(stat.parent.name))
    return found


def test_the_worker_serve_starts_runs_niced_below_the_gateway(pair: Pair) -> None:
    (worker,) = wait_for(lambda: _worker_children(pair.trainer.process.pid), timeout=30, what="serve's worker")
    gateway = os.getpriority(os.PRIO_PROCESS, pair.trainer.process.pid)
    if gateway > 9:
        pytest.skip(f"the tests run at nice {gateway}: a worker 10 below it is past the lowest priority (19)")
    niced = gateway + 10  # training yields the CPU to requests (bench/train_interference.py)
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, worker) == niced, timeout=30, what="the worker niced")
    assert os.getpriority(os.PRIO_PROCESS, pair.trainer.process.pid) == gateway  # the gateway itself is not
    assert _worker_children(pair.other.process.pid) == []  # --no-worker


def _another_project_cannot_see_or_use(server: LiveServer, model: str) -> None:
    project = f"p-{uuid.uuid4().hex[:12]}"
    created = httpx.post(server.url + "/v1/organization/projects", json={"name": project, "id": project})
    assert created.status_code == 200, created.text
    with _sdk(server, project) as foreign:
        wait_for(lambda: _known(foreign), timeout=30, what="the new project known to the server")
        assert model not in [m.id for m in foreign.models.list()]
        with pytest.raises(openai.NotFoundError):
            foreign.models.retrieve(model)
        with pytest.raises(openai.NotFoundError) as raised:
            foreign.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert raised.value.code == "model_not_found"


def _known(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.NotFoundError as exc:  # project_not_found until the server's next poll of projects
        assert exc.code == "project_not_found"
        return False
    return True

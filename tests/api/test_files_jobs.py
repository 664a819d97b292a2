"""Files and fine-tuning jobs through the real openai SDK against a real `stillroom serve` (with its worker
process), on both databases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import LOCAL_MODEL
from tests.envelope import assert_openai_error
from tests.live import LiveServer, start_server

CONFIG = f'[[models]]\nname = "{LOCAL_MODEL}"\nprovider = "local"\n'


@pytest.fixture(scope="module")
def jobs_server(open_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("jobs")
    live = start_server(tmp, open_db_url, config=CONFIG, env={"STILLROOM_JOB_LEASE_SECONDS": "5"}, name="jobs")
    yield live
    live.stop()


@pytest.fixture
def sdk(jobs_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=jobs_server.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def _jsonl(n: int, tag: str = "") -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"{tag} question {i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    ]
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _wait(predicate: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_files_create_retrieve_list_content_delete(sdk: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(_jsonl(12))
    created = sdk.files.create(file=path, purpose="fine-tune")
    assert created.id.startswith("file-") and created.bytes == path.stat().st_size
    assert created.purpose == "fine-tune" and created.filename == "train.jsonl" and created.status == "processed"
    assert sdk.files.retrieve(created.id).id == created.id
    assert created.id in [f.id for f in sdk.files.list(purpose="fine-tune")]
    assert sdk.files.content(created.id).content == path.read_bytes()
    deleted = sdk.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)


def test_a_bad_fine_tune_line_is_refused_naming_line_and_rule(jobs_server: LiveServer) -> None:
    bad = _jsonl(3) + b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    response = httpx.post(
        jobs_server.url + "/v1/files", files={"file": ("bad.jsonl", bad)}, data={"purpose": "fine-tune"}
    )
    error = assert_openai_error(response, 400, "invalid_request_error", "file")
    assert "line 4" in error["message"] and "example_missing_assistant_message" in error["message"]


def test_jobs_create_retrieve_list_events_and_too_few_examples_fail(sdk: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "few.jsonl"
    path.write_bytes(_jsonl(3))
    training = sdk.files.create(file=path, purpose="fine-tune")
    tag = uuid.uuid4().hex
    job = sdk.fine_tuning.jobs.create(
        model=LOCAL_MODEL, training_file=training.id, suffix="few", seed=11, metadata={"tag": tag}
    )
    assert job.status == "validating_files" and job.seed == 11 and job.metadata == {"tag": tag}
    assert job.hyperparameters.n_epochs == "auto"
    failed = _wait(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status == "failed" and j)
    assert failed.error.code == "invalid_n_examples" and failed.error.param == "training_file"
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"tag": tag})] == [job.id]
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id)]
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert sdk.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_cancel_and_errors(sdk: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(_jsonl(10))
    training = sdk.files.create(file=path, purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.fine_tuning.jobs.create(model="no-such-model", training_file=training.id)
    assert raised.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.create(model=LOCAL_MODEL, training_file="file-missing")
    job = sdk.fine_tuning.jobs.create(model=LOCAL_MODEL, training_file=training.id)
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-missing")

"""Upstream fine-tuning with a second Stillroom as the provider, on both databases (the gateway's): the upstream
`stillroom serve` trains the tiny model with its own worker (SQLite of its own, its own key); the gateway
serves only `openai` and `azure` entries that point at it, and its jobs run in `stillroom worker` processes
the tests start and kill. Jobs are created, followed and cancelled through the real openai SDK, and the
resulting model answers through the gateway, which has no model of its own to answer with."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import openai
import pytest
from sqlalchemy import select

from stillroom.store.db import make_engine
from stillroom.store.tables import metadata
from tests.conftest import AZURE_API_VERSION, UPSTREAM_KEY
from tests.live import LiveServer, start_server, start_worker, stop_process
from tests.training.conftest import planted_examples, write_jsonl

pytest.importorskip("torch", reason="the upstream's trainer needs the `train` extra (torch, transformers, peft, gguf)")

TINY = "tiny-llama"
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Upstreamed:
    upstream: LiveServer  # trains (its own worker, its own SQLite)
    gateway: LiveServer  # --no-worker: its jobs run in `workers`
    tmp: Path
    worker_config: str
    worker_env: dict[str, str]
    workers: list[tuple[Popen[bytes], Path]] = field(default_factory=list)

    def start_worker(self) -> Popen[bytes]:
        name = f"worker-{len(self.workers)}"
        process, log = start_worker(
            self.tmp, self.gateway.database_url, config=self.worker_config, env=self.worker_env, name=name
        )
        self.workers.append((process, log))
        return process

    def logs(self) -> str:
        return self.gateway.log() + "".join(log.read_text(errors="replace") for _, log in self.workers)


def gateway_config(upstream: str) -> str:
    remote = f'api_key_env = "TEST_UPSTREAM_KEY"\nupstream_model = "{TINY}"\n'
    return (
        f'[[models]]\nname = "tiny-remote"\nprovider = "openai"\nbase_url = "{upstream}/v1"\n{remote}\n'
        f'[[models]]\nname = "tiny-azure"\nprovider = "azure"\nendpoint = "{upstream}"\n'
        f'api_version = "{AZURE_API_VERSION}"\n{remote}\n'
        f'[[models]]\nname = "tiny-badkey"\nprovider = "openai"\nbase_url = "{upstream}/v1"\n'
        f'api_key_env = "TEST_WRONG_KEY"\nupstream_model = "{TINY}"\n'
    )


@pytest.fixture(scope="module")
def setup(open_db_url: str, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreamed]:
    tmp = tmp_path_factory.mktemp("upstreamed")
    upstream = start_server(
        tmp,
        f"sqlite:///{tmp / 'upstream.db'}",
        config=f'[[models]]\nname = "{TINY}"\nprovider = "local"\npath = "{tiny_gguf}"\nn_ctx = 512\n',
        api_key=UPSTREAM_KEY,
        env={"STILLROOM_FILES_DIR": str(tmp / "upstream-files")},
        name="upstream",
    )
    keys = {"TEST_UPSTREAM_KEY": UPSTREAM_KEY, "TEST_WRONG_KEY": "sk-not-the-upstream-key"}
    config = gateway_config(upstream.url)
    files = {"STILLROOM_FILES_DIR": str(tmp / "gateway-files")}
    try:
        gateway = start_server(
            tmp, open_db_url, config=config, env=keys | files, name="gateway", extra_args=("--no-worker",)
        )
    except BaseException:
        upstream.stop()
        raise
    worker_env = keys | files | {"STILLROOM_JOB_LEASE_SECONDS": "3", "STILLROOM_UPSTREAM_POLL_SECONDS": "0.5"}
    setup = Upstreamed(upstream, gateway, tmp, config, worker_env)
    setup.start_worker()
    yield setup
    for process, _ in setup.workers:
        stop_process(process)
    gateway.stop()
    upstream.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 240, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what} not met in {timeout} s")


def _gateway(setup: Upstreamed) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup.gateway.url + "/v1", api_key="unused", max_retries=0)


def _upstream(setup: Upstreamed) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup.upstream.url + "/v1", api_key=UPSTREAM_KEY, max_retries=0)


def _upstream_jobs(setup: Upstreamed, job_id: str) -> list[Any]:
    """The upstream's jobs made for gateway job `job_id` (found by the metadata the gateway's worker sends)."""
    with _upstream(setup) as upstream:
        return list(upstream.fine_tuning.jobs.list(metadata={"stillroom_job_id": job_id}, limit=100))


def _create(sdk: openai.OpenAI, tmp: Path, model: str, epochs: int, validation: bool = True) -> Any:
    training = sdk.files.create(file=write_jsonl(tmp / "train.jsonl", planted_examples(12)), purpose="fine-tune")
    extra: dict[str, Any] = {}
    if validation:
        valid = write_jsonl(tmp / "valid.jsonl", planted_examples(4, offset=40))
        extra["validation_file"] = sdk.files.create(file=valid, purpose="fine-tune").id
    return sdk.fine_tuning.jobs.create(
        model=model,
        training_file=training.id,
        suffix="colours",
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 4}}},
        **extra,
    )


def _ended(sdk: openai.OpenAI, job_id: str) -> Any:
    return wait_for(
        lambda: (j := sdk.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and j, what=f"{job_id} ending"
    )


def _messages(sdk: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in sdk.fine_tuning.jobs.list_events(job_id, limit=100)]


def _kill_workers(setup: Upstreamed) -> None:
    for process, _ in setup.workers:
        if process.poll() is None:
            process.kill()
            process.wait()


def _assert_copies_deleted(setup: Upstreamed, upstream_job: Any) -> None:
    """The upstream's copies of the job's files are gone (deleted by the gateway's worker)."""
    copies = [f for f in (upstream_job.training_file, upstream_job.validation_file) if f]
    assert copies
    with _upstream(setup) as upstream:
        for file_id in copies:
            with pytest.raises(openai.NotFoundError):
                upstream.files.retrieve(file_id)


def test_a_job_trains_upstream_mirrors_its_progress_and_its_model_answers_through_the_gateway(
    setup: Upstreamed, tmp_path: Path
) -> None:
    with _gateway(setup) as sdk:
        job = _create(sdk, tmp_path, "tiny-remote", epochs=2)
        done = _ended(sdk, job.id)
        assert done.status == "succeeded", (done.error, setup.logs()[-4000:])
        assert done.fine_tuned_model == f"ft:tiny-remote:default:colours:{job.id}"  # Stillroom's name, its project
        (upstream_job,) = _upstream_jobs(setup, job.id)  # created once
        assert upstream_job.status == "succeeded" and upstream_job.model == TINY
        assert upstream_job.seed == 3 and upstream_job.suffix == "colours"
        assert done.trained_tokens == upstream_job.trained_tokens and done.trained_tokens
        assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 4

        events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
        losses = [e.data["train_loss"] for e in events if e.type == "metrics" and e.data]
        assert len(losses) == 6  # the upstream's metrics events, mirrored
        messages = [e.message for e in events]
        assert messages[0] == "The job has successfully completed"
        host = setup.upstream.url.removeprefix("http://")
        assert f"Created upstream fine-tuning job {upstream_job.id} on {host}" in messages
        assert f"New fine-tuned model created: {upstream_job.fine_tuned_model}" in messages  # the upstream's event
        assert f"Upstream model: {upstream_job.fine_tuned_model}" in messages
        deleted = f"Deleted the upstream copies of the job's files on {host}: {upstream_job.training_file}, "
        assert any(m.startswith(deleted) for m in messages)
        _assert_copies_deleted(setup, upstream_job)  # the upstream job ended: its training files went

        checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
        assert sorted(c.step_number for c in checkpoints) == [3, 6]
        assert {c.fine_tuned_model_checkpoint for c in checkpoints} == {
            f"{done.fine_tuned_model}:ckpt-step-{n}" for n in (3, 6)
        }
        assert all(c.metrics.valid_loss is not None for c in checkpoints)
        (metrics,) = done.result_files
        assert sdk.files.retrieve(metrics).filename == f"{job.id}-step_metrics.csv"
        assert sdk.files.content(metrics).text.splitlines()[0].startswith("step,")

        assert done.fine_tuned_model in [m.id for m in sdk.models.list()]
        answer = sdk.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "Which colour is item 99? It is red."}],
            max_tokens=8,
            temperature=0,
            store=True,
        )
        assert answer.choices[0].message.content is not None and answer.usage and answer.usage.completion_tokens > 0
        assert answer.model == upstream_job.fine_tuned_model  # the upstream answered, with its own name for it


def test_an_azure_provider_fine_tunes_through_the_openai_paths_and_routes_to_the_deployment(
    setup: Upstreamed, tmp_path: Path
) -> None:
    with _gateway(setup) as sdk:
        job = _create(sdk, tmp_path, "tiny-azure", epochs=1, validation=False)
        done = _ended(sdk, job.id)
        assert done.status == "succeeded", (done.error, setup.logs()[-4000:])
        assert done.fine_tuned_model == f"ft:tiny-azure:default:colours:{job.id}"
        assert len(_upstream_jobs(setup, job.id)) == 1
        answer = sdk.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.choices[0].message.content is not None
    # The endpoint has no /v1: files, jobs and the deployment's chat completions were all reached under /openai.


def test_a_cancel_is_forwarded_to_the_upstream_job(setup: Upstreamed, tmp_path: Path) -> None:
    with _gateway(setup) as sdk:
        job = _create(sdk, tmp_path, "tiny-remote", epochs=50, validation=False)
        wait_for(lambda: _upstream_jobs(setup, job.id), what="the upstream job")
        wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).status == "running", what="running upstream")
        assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        (upstream_job,) = wait_for(
            lambda: [j for j in _upstream_jobs(setup, job.id) if j.status == "cancelled"], what="the upstream cancel"
        )
        wait_for(lambda: f"Cancelled upstream job {upstream_job.id}" in _messages(sdk, job.id), what="the event")
        assert sdk.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
        wait_for(lambda: any(m.startswith("Deleted the upstream copies") for m in _messages(sdk, job.id)), what="rm")
        _assert_copies_deleted(setup, upstream_job)


def test_a_job_cancelled_while_no_worker_follows_it_is_cancelled_upstream_by_the_next_worker(
    setup: Upstreamed, tmp_path: Path
) -> None:
    with _gateway(setup) as sdk:
        job = _create(sdk, tmp_path, "tiny-remote", epochs=50)
        (upstream_job,) = wait_for(lambda: _upstream_jobs(setup, job.id), what="the upstream job")
        _kill_workers(setup)
        assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        assert _upstream_jobs(setup, job.id)[0].status not in TERMINAL  # the API only marked the row
        setup.start_worker()
        wait_for(
            lambda: [j for j in _upstream_jobs(setup, job.id) if j.status == "cancelled"], what="the upstream cancel"
        )
        wait_for(lambda: any(m.startswith("Deleted the upstream copies") for m in _messages(sdk, job.id)), what="rm")
        assert f"Cancelled upstream job {upstream_job.id}" in _messages(sdk, job.id)
        _assert_copies_deleted(setup, upstream_job)
        assert sdk.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_a_job_whose_upstream_refuses_the_key_fails_saying_so(setup: Upstreamed, tmp_path: Path) -> None:
    with _gateway(setup) as sdk:
        done = _ended(sdk, _create(sdk, tmp_path, "tiny-badkey", epochs=1, validation=False).id)
        assert done.status == "failed"
        assert done.error.code == "upstream_auth_failed"
        assert "tiny-badkey" in done.error.message and "sk-not-the-upstream-key" not in done.error.message


def test_a_lost_worker_s_upstream_job_is_followed_by_the_next_never_created_twice(
    setup: Upstreamed, tmp_path: Path
) -> None:
    with _gateway(setup) as sdk:
        job = _create(sdk, tmp_path, "tiny-remote", epochs=6, validation=False)
        wait_for(lambda: _upstream_jobs(setup, job.id), what="the upstream job")
        _kill_workers(setup)
        setup.start_worker()
        done = _ended(sdk, job.id)
        assert done.status == "succeeded", (done.error, setup.logs()[-4000:])
        assert len(_upstream_jobs(setup, job.id)) == 1
        assert any("follows the upstream job again" in m for m in _messages(sdk, job.id))
        assert done.fine_tuned_model in [m.id for m in sdk.models.list()]


def test_the_upstream_key_is_never_stored_or_logged(setup: Upstreamed) -> None:
    engine = make_engine(setup.gateway.database_url)
    try:
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                rows = conn.execute(select(table)).all()
                assert UPSTREAM_KEY not in repr(rows), table.name
    finally:
        engine.dispose()
    assert UPSTREAM_KEY not in setup.logs()

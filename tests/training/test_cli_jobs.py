"""`stillroom distill` and `stillroom jobs list/show/events/cancel` (cli_jobs.py) on the tiny model, with a
real `stillroom worker` process training: the progress bar written to a non-TTY, the loss plot a PNG."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from stillroom.cli import app
from stillroom.store.completions import CompletionRecord, save_completions
from stillroom.store.jobs import count_jobs
from stillroom.wire.ids import new_completion_id
from tests.jobs_db import migrated
from tests.live import start_worker, stop_process
from tests.training.conftest import planted_examples
from tests.training.test_end_to_end import TINY, tiny_config

pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = migrated(db_url)
    yield eng
    eng.dispose()


def _store(engine: Engine, project: str, tag: str, n: int) -> None:
    records = []
    for i, example in enumerate(planted_examples(n)):
        question, answer = example["messages"]
        message = {"role": "assistant", "content": answer["content"]}
        records.append(
            CompletionRecord(
                id=new_completion_id(),
                project_id=project,
                model="teacher",
                provider="local",
                request={"model": "teacher"},
                response={"id": "x", "created": 1000 + i, "choices": [{"index": 0, "message": message}]},
                messages=[{"role": "system", "content": "Answer as 'Answer: COLOUR.'"}, question],
                metadata={"tag": tag},
                request_id="req_1",
                stream=False,
                incomplete=False,
                latency_ms=1.0,
            )
        )
    save_completions(engine, records)


def test_distill_follows_the_job_and_jobs_commands_show_it(
    engine: Engine, db_url: str, tiny_gguf: Path, tmp_path: Path
) -> None:
    project, tag = f"p-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    _store(engine, project, tag, 15)
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(tiny_gguf))
    env = {"STILLROOM_FILES_DIR": str(tmp_path / "files")}
    common = ["--project", project, "--database-url", db_url]
    runner = CliRunner(env={"COLUMNS": "250"})  # rich tables unwrapped
    worker, log = start_worker(
        tmp_path, db_url, config=tiny_config(tiny_gguf), env=env | {"STILLROOM_JOB_LEASE_SECONDS": "5"}
    )
    try:
        distilled = runner.invoke(
            app,
            [
                *("distill", "--base", TINY, "-m", f"tag={tag}", "--suffix", "cli", "--validation", "0.2"),
                *("--strip-system", "--n-epochs", "1", "--config", str(config), *common),
            ],
            env=env,
        )
    finally:
        stop_process(worker)
    assert distilled.exit_code == 0, distilled.output + log.read_text()[-2000:]
    out = distilled.output
    counts = re.search(r"dataset: (\d+) training, (\d+) validation examples \(file-", out)
    assert counts is not None
    n_training, n_validation = int(counts.group(1)), int(counts.group(2))
    assert n_training + n_validation == 15 and n_validation >= 1  # the split is by a hash of each example
    match = re.search(r"job (ftjob-\S+) created", out)
    assert match is not None
    job_id = match.group(1)
    assert f"{n_training}/{n_training} steps" in out and "loss " in out  # the bar's last state (a non-TTY)
    assert f"fine-tuned model: ft:{TINY}:{project}:cli:{job_id}" in out

    listed = runner.invoke(app, ["jobs", "list", *common])
    assert listed.exit_code == 0 and job_id in listed.output and "succeeded" in listed.output

    plot = tmp_path / "loss.png"
    shown = runner.invoke(app, ["jobs", "show", job_id, "--plot", str(plot), *common])
    assert shown.exit_code == 0, shown.output
    assert "succeeded" in shown.output and "trained_tokens" in shown.output
    assert plot.read_bytes()[:8] == PNG

    events = runner.invoke(app, ["jobs", "events", job_id, *common])
    lines = events.output.splitlines()
    assert events.exit_code == 0 and f"Step 1/{n_training}: training loss=" in events.output
    assert lines[0].endswith(f"Created fine-tuning job: {job_id}")
    assert lines[-1].endswith("The job has successfully completed")

    finished = runner.invoke(app, ["jobs", "cancel", job_id, *common])
    assert finished.exit_code == 1 and finished.output.startswith("error:") and "already succeeded" in finished.output


def test_jobs_cancel_cancels_a_queued_job_and_unknown_ids_fail_in_one_line(
    engine: Engine, db_url: str, tiny_gguf: Path, tmp_path: Path
) -> None:
    project, tag = f"p-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    _store(engine, project, tag, 10)
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(tiny_gguf))
    common = ["--project", project, "--database-url", db_url]
    runner = CliRunner(env={"COLUMNS": "250"})  # rich tables unwrapped
    env = {"STILLROOM_FILES_DIR": str(tmp_path / "files")}
    created = runner.invoke(
        app, ["distill", "--base", TINY, "-m", f"tag={tag}", "--no-wait", "--config", str(config), *common], env=env
    )
    assert created.exit_code == 0, created.output
    match = re.search(r"job (ftjob-\S+) created", created.output)
    assert match is not None
    cancelled = runner.invoke(app, ["jobs", "cancel", match.group(1), *common])
    assert cancelled.exit_code == 0 and cancelled.output.strip() == f"{match.group(1)} cancelled"

    before = count_jobs(engine)
    for command in (["show", "ftjob-missing"], ["events", "ftjob-missing"], ["cancel", "ftjob-missing"]):
        missing = runner.invoke(app, ["jobs", *command, *common])
        assert missing.exit_code == 1 and missing.output.count("\n") == 1, missing.output
        assert "Could not find fine-tune: ftjob-missing" in missing.output
    assert count_jobs(engine) == before

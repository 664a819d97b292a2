"""Export: stored completions become chat fine-tuning rows, filtered like the list endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, event
from typer.testing import CliRunner

from stillroom.cli import app
from stillroom.export import iter_training_rows
from stillroom.store.completions import CompletionRecord, delete_completion, save_completions
from stillroom.store.db import make_engine, write_transaction
from stillroom.store.migrate import upgrade_database
from stillroom.wire.ids import new_completion_id


@pytest.fixture(scope="module")
def store_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def _record(
    project: str, question: str, answer: str | None, *, incomplete: bool = False, tag: str = "a"
) -> CompletionRecord:
    message = {"role": "assistant", "content": answer, "refusal": None}
    return CompletionRecord(
        id=new_completion_id(),
        project_id=project,
        model="m",
        provider="local",
        request={"model": "m", "temperature": 0},
        response={"id": "x", "created": 1, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        metadata={"tag": tag},
        request_id="req_1",
        stream=False,
        incomplete=incomplete,
        latency_ms=1.0,
    )


def test_rows_are_inputs_plus_the_answer_in_commit_order(store_engine: Engine) -> None:
    project = uuid.uuid4().hex
    save_completions(store_engine, [_record(project, f"q{i}", f"a{i}") for i in range(1203)])
    rows = list(iter_training_rows(store_engine, project, metadata={}, model=None))
    assert len(rows) == 1203  # more than two export pages
    assert rows[7] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "q7"},
            {"role": "assistant", "content": "a7"},
        ]
    }
    assert [r["messages"][1]["content"] for r in rows] == [f"q{i}" for i in range(1203)]


def test_incomplete_and_empty_answers_are_left_out_and_filters_apply(store_engine: Engine) -> None:
    project = uuid.uuid4().hex
    save_completions(
        store_engine,
        [
            _record(project, "kept", "yes", tag="t"),
            _record(project, "cut", "partial", incomplete=True, tag="t"),
            _record(project, "empty", None, tag="t"),
            _record(project, "other tag", "no", tag="u"),
        ],
    )
    rows = list(iter_training_rows(store_engine, project, metadata={"tag": "t"}, model=None))
    assert [r["messages"][1]["content"] for r in rows] == ["kept"]
    assert list(iter_training_rows(store_engine, project, metadata={}, model="other")) == []


def test_cli_export_writes_jsonl(store_engine: Engine, db_url: str, tmp_path: Path) -> None:
    project = uuid.uuid4().hex
    save_completions(store_engine, [_record(project, "q", "a", tag="x"), _record(project, "q2", "a2", tag="y")])
    out = tmp_path / "train.jsonl"
    result = CliRunner().invoke(
        app, ["export", "-o", str(out), "-m", "tag=x", "--project", project, "--database-url", db_url]
    )
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    assert [orjson.loads(line)["messages"][-1]["content"] for line in lines] == ["a"]


def test_cli_export_rejects_a_malformed_filter(db_url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["export", "-o", str(tmp_path / "x.jsonl"), "-m", "novalue", "--database-url", db_url]
    )
    assert result.exit_code != 0
    assert "key=value" in result.output


def test_a_completion_deleted_while_its_page_is_read_is_exported_whole(store_engine: Engine) -> None:
    """The page and its message bodies are one snapshot: a delete committed in between (here, just before
    the bodies are read) neither aborts the export nor leaves a row without its messages."""
    project = uuid.uuid4().hex
    records = [_record(project, f"only in q{i} {project}", f"a{i}") for i in range(3)]
    save_completions(store_engine, records)
    fired: list[bool] = []

    def delete_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and "FROM message_contents" in statement:
            fired.append(True)
            with write_transaction(store_engine) as writer:
                assert delete_completion(writer, project, records[0].id)

    event.listen(store_engine, "before_cursor_execute", delete_first)
    try:
        rows = list(iter_training_rows(store_engine, project, metadata={}, model=None))
    finally:
        event.remove(store_engine, "before_cursor_execute", delete_first)
    assert fired
    assert [r["messages"][1]["content"] for r in rows] == [r.messages[1]["content"] for r in records]
    assert [
        r["messages"][1]["content"] for r in iter_training_rows(store_engine, project, metadata={}, model=None)
    ] == [r.messages[1]["content"] for r in records[1:]]


def test_a_completion_committed_after_its_id_was_passed_is_still_exported(store_engine: Engine) -> None:
    """Export pages in commit order: a stream minted before and committed after a page boundary is on a
    later page, not skipped."""
    project = uuid.uuid4().hex
    stream = _record(project, "the long stream", "s")
    shorts = [_record(project, f"short {i}", f"a{i}") for i in range(3)]
    save_completions(store_engine, shorts)
    save_completions(store_engine, [stream])
    rows = list(iter_training_rows(store_engine, project, metadata={}, model=None))
    assert [r["messages"][1]["content"] for r in rows] == ["short 0", "short 1", "short 2", "the long stream"]

"""Datasets from a selection: each option, the under-10 error, JSONL and Parquet output."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

from stillroom.distill.dataset import DatasetOptions, build_dataset
from stillroom.distill.export import Selection
from stillroom.distill.parquet import write_parquet
from stillroom.distill.request import parse_dataset_request
from stillroom.errors import BadRequestError
from stillroom.store.blobs import LocalFileStorage
from stillroom.store.completions import CompletionRecord, save_completions
from stillroom.store.files import count_files
from stillroom.store.projects import direct_writes
from stillroom.store.timeline import id_micros
from stillroom.stored import StoredFilter
from stillroom.wire.ids import new_completion_id
from tests.jobs_db import migrated


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = migrated(db_url)
    yield eng
    eng.dispose()


def _record(
    project: str,
    i: int,
    *,
    finish: str = "stop",
    incomplete: bool = False,
    answer: str | None = None,
    tag: str = "t",
    messages: list[dict[str, Any]] | None = None,
) -> CompletionRecord:
    message = {"role": "assistant", "content": answer if answer is not None else f"a{i}", "refusal": None}
    return CompletionRecord(
        id=new_completion_id(),
        project_id=project,
        model="m",
        provider="local",
        request={
            "model": "m",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "parallel_tool_calls": False,
        },
        response={
            "id": "x",
            "created": 1000 + i,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        },
        messages=messages or [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}],
        metadata={"tag": tag},
        request_id="req_1",
        stream=False,
        incomplete=incomplete,
        latency_ms=1.0,
    )


def _lines(storage: LocalFileStorage, file_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in storage.local_path(file_id).read_bytes().splitlines()]


def _build(
    engine: Engine, storage: LocalFileStorage, project: str, selection: Selection | None = None, **options: Any
) -> Any:
    return build_dataset(
        engine,
        direct_writes(engine),
        storage,
        project,
        selection or Selection(StoredFilter(metadata={"tag": "t"})),
        DatasetOptions(**options),
        max_bytes=1 << 24,
    )


def test_options_drop_dedupe_strip_and_split(engine: Engine, tmp_path: Path) -> None:
    project = uuid.uuid4().hex[:12]
    records = [_record(project, i) for i in range(20)]
    records += [
        _record(project, 100, finish="length"),
        _record(project, 101, incomplete=True),
        _record(project, 102, answer=""),
        _record(project, 5),
        _record(project, 200, tag="other"),
    ]
    save_completions(engine, records)
    storage = LocalFileStorage(tmp_path)
    dataset = _build(engine, storage, project, system_prompt="strip", validation_fraction=0.3, seed=1)
    counts = dataset.render()["counts"]
    assert counts["selected"] == 24
    assert counts["dropped"] == {"incomplete": 1, "truncated": 1, "no_answer": 1, "duplicate": 1}
    assert counts["training"] + counts["validation"] == 20 and counts["validation"] > 0
    rows = _lines(storage, dataset.training.id) + _lines(storage, dataset.validation.id)
    assert all(r["messages"][0]["role"] == "user" for r in rows)  # system prompt stripped
    assert rows[0]["tools"] and rows[0]["parallel_tool_calls"] is False
    assert "refusal" not in rows[0]["messages"][-1]
    again = _build(engine, storage, project, system_prompt="strip", validation_fraction=0.3, seed=1)
    assert _lines(storage, again.validation.id) == _lines(storage, dataset.validation.id)  # deterministic
    replaced = _build(engine, storage, project, system_prompt="replace", replacement="Talk like a pirate.")
    assert _lines(storage, replaced.training.id)[0]["messages"][0] == {
        "role": "system",
        "content": "Talk like a pirate.",
    }
    kept = _build(engine, storage, project, drop_truncated=False, dedupe=False)
    assert kept.render()["counts"]["training"] == 22


FEW_SHOT = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What colour is snow?"},
    {"role": "assistant", "content": "Answer: white."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "Answer: 4."},
]


def test_last_turn_drops_few_shot_turns_and_keeps_or_strips_the_system_prompt(engine: Engine, tmp_path: Path) -> None:
    project = uuid.uuid4().hex[:12]
    records = [_record(project, i, messages=[*FEW_SHOT, {"role": "user", "content": f"q{i}"}]) for i in range(12)]
    tool_turns = [
        {"role": "user", "content": "q-tool"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    records.append(_record(project, 50, messages=[*FEW_SHOT, *tool_turns]))
    records.append(_record(project, 51, messages=[{"role": "user", "content": "q-alone"}]))
    save_completions(engine, records)
    storage = LocalFileStorage(tmp_path)

    kept = _lines(storage, _build(engine, storage, project, last_turn=True).training.id)
    assert kept[0]["messages"] == [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "q0"},
        {"role": "assistant", "content": "a0"},
    ]
    assert [m["role"] for m in kept[12]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert kept[13]["messages"] == [{"role": "user", "content": "q-alone"}, {"role": "assistant", "content": "a51"}]

    stripped = _lines(storage, _build(engine, storage, project, last_turn=True, system_prompt="strip").training.id)
    assert stripped[0]["messages"] == [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]
    assert stripped[0]["tools"]  # the request's tools stay
    whole = _lines(storage, _build(engine, storage, project, system_prompt="strip").training.id)
    assert len(whole[0]["messages"]) == 6  # without the option every turn stays


def test_a_dataset_request_parses_last_turn() -> None:
    assert parse_dataset_request({})[1].last_turn is False
    _, options = parse_dataset_request({"last_turn": True, "system_prompt": "strip"})
    assert options.last_turn is True and options.system_prompt == "strip"
    with pytest.raises(BadRequestError) as raised:
        parse_dataset_request({"last_turn": "yes"})
    assert raised.value.param == "last_turn"


def test_ids_time_range_and_limit_select(engine: Engine, tmp_path: Path) -> None:
    project = uuid.uuid4().hex[:12]
    records = [_record(project, i) for i in range(30)]
    save_completions(engine, records)
    storage = LocalFileStorage(tmp_path)
    # A time range is the list's: on the ids' times, after inclusive, before exclusive (µs here).
    window = StoredFilter(created_after=id_micros(records[5].id), created_before=id_micros(records[20].id))
    ranged = _build(engine, storage, project, Selection(window))
    assert [r["messages"][1]["content"] for r in _lines(storage, ranged.training.id)] == [f"q{i}" for i in range(5, 20)]
    chosen = _build(engine, storage, project, Selection(ids=tuple(r.id for r in records[:12])))
    assert chosen.training_examples == 12
    assert _build(engine, storage, project, limit=10).training_examples == 10


def test_under_ten_usable_examples_is_a_400_saying_why(engine: Engine, tmp_path: Path) -> None:
    project = uuid.uuid4().hex[:12]
    save_completions(engine, [_record(project, i) for i in range(8)] + [_record(project, 50, finish="length")])
    before = count_files(engine)
    with pytest.raises(BadRequestError) as raised:
        _build(engine, LocalFileStorage(tmp_path), project)
    assert "Only 8 usable" in raised.value.message and "1 truncated" in raised.value.message
    assert raised.value.code == "invalid_n_examples"
    assert count_files(engine) == before
    assert [p for p in tmp_path.iterdir()] == []


def test_parquet_keeps_messages_and_tools(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rows = [
        {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    ]
    source = io.BytesIO(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert write_parquet(source, tmp_path / "d.parquet") == 1
    table = pq.read_table(tmp_path / "d.parquet").to_pylist()
    assert table[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "f"
    assert orjson.loads(table[0]["tools"]) == rows[0]["tools"]

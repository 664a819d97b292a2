"""Runs end to end below the HTTP layer, on SQLite and PostgreSQL: grading stored answers, sampling the
embedded model, a grader failing one item, cancelling mid-run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from sqlalchemy import Engine

from stillroom.config import ModelConfig
from stillroom.evals import evaluations
from stillroom.evals.runs import RunWorker
from stillroom.evals.sampling import RegistrySampler
from stillroom.providers.registry import ProviderRegistry
from stillroom.store import evals as store
from stillroom.store.completions import CompletionRecord, save_completions
from stillroom.store.projects import direct_writes
from stillroom.wire.ids import new_completion_id

LOCAL = "smollm2-135m-instruct"
LIKE_DEAR = {
    "type": "string_check",
    "name": "greets",
    "input": "{{sample.output_text}}",
    "reference": "Dear customer",
    "operation": "like",
}


def store_answer(engine: Engine, project: str, question: str, answer: str, metadata: dict[str, str]) -> str:
    completion_id = new_completion_id()
    response = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "teacher",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    record = CompletionRecord(
        id=completion_id,
        project_id=project,
        model="teacher",
        provider="openai",
        request={"model": "teacher", "temperature": 0},
        response=response,
        messages=[{"role": "user", "content": question}],
        metadata=metadata,
        request_id="req_test",
        stream=False,
        incomplete=False,
        latency_ms=1.0,
    )
    save_completions(engine, [record])
    return completion_id


def make_eval(
    engine: Engine, project: str, criteria: list[dict[str, Any]], config: dict[str, Any] | None = None
) -> str:
    body = {"name": "e", "data_source_config": config or {"type": "logs"}, "testing_criteria": criteria}
    return str(evaluations.create_eval(body, project, direct_writes(engine))["id"])


def make_run(engine: Engine, project: str, eval_id: str, data_source: dict[str, Any]) -> str:
    run = evaluations.create_run(
        engine,
        project,
        eval_id,
        {"data_source": data_source},
        direct_writes(engine),
        is_model=lambda name: True,
        report_base="http://x",
    )
    return str(run["id"])


class NoModel:
    """A fake sampler, named as such, for runs that must never sample."""

    async def complete(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("this run should not sample a model")


def work(engine: Engine, sampler: Any, **kwargs: Any) -> bool:
    return asyncio.run(RunWorker(engine, sampler, lambda project, file_id: b"", **kwargs).run_once())


def run_row(engine: Engine, project: str, eval_id: str, run_id: str) -> store.RunRow:
    return evaluations.get_run_row(engine, project, eval_id, run_id)


def test_a_run_grades_the_stored_answers_of_a_selection(eval_engine: Engine, project: str) -> None:
    tag = {"batch": project}
    store_answer(eval_engine, project, "Where is my parcel?", "Dear customer, it ships today.", tag)
    store_answer(eval_engine, project, "Refund?", "Dear customer, refunded.", tag)
    store_answer(eval_engine, project, "Hi", "Hello!", tag)
    store_answer(eval_engine, project, "Not selected", "Dear customer", {"batch": "other"})
    eval_id = make_eval(eval_engine, project, [LIKE_DEAR])
    source = {"type": "completions", "source": {"type": "stored_completions", "metadata": tag}}
    run_id = make_run(eval_engine, project, eval_id, source)

    assert work(eval_engine, NoModel())

    run = run_row(eval_engine, project, eval_id, run_id)
    assert run.status == "completed"
    assert run.result_counts == {"total": 3, "errored": 0, "failed": 1, "passed": 2}
    criterion = run.per_testing_criteria_results[0]
    assert (criterion["passed"], criterion["failed"]) == (2, 1)
    items = store.all_output_items(eval_engine, run_id)
    assert [i.status for i in items] == ["pass", "pass", "fail"]
    assert items[0].datasource_item["input"] == [{"role": "user", "content": "Where is my parcel?"}]
    assert items[2].sample["output_text"] == "Hello!"
    failed = evaluations.list_output_items(
        eval_engine, project, eval_id, run_id, after=None, limit=None, order=None, status="fail"
    )
    assert [i["datasource_item"]["output_text"] for i in failed["data"]] == ["Hello!"]


def test_a_completions_run_samples_the_embedded_model(eval_engine: Engine, project: str) -> None:
    eval_id = make_eval(
        eval_engine,
        project,
        [
            {
                "type": "string_check",
                "name": "nonempty",
                "input": "{{sample.output_text}}",
                "reference": "",
                "operation": "ne",
            }
        ],
        {"type": "custom", "item_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
    )
    source = {
        "type": "completions",
        "model": LOCAL,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8, "seed": 1},
        "source": {"type": "file_content", "content": [{"item": {"q": "Name a colour."}}, {"item": {"q": "Say hi."}}]},
    }
    run_id = make_run(eval_engine, project, eval_id, source)

    async def go() -> bool:
        async with aiohttp.ClientSession() as session:
            registry = ProviderRegistry([ModelConfig(name=LOCAL, provider="local")], session)
            try:
                return await RunWorker(eval_engine, RegistrySampler(registry), lambda project, f: b"").run_once()
            finally:
                await registry.aclose()

    assert asyncio.run(go())
    run = run_row(eval_engine, project, eval_id, run_id)
    assert run.status == "completed" and run.result_counts["total"] == 2
    usage = run.per_model_usage
    assert [u["model_name"] for u in usage] == [LOCAL] and usage[0]["invocation_count"] == 2
    assert usage[0]["completion_tokens"] > 0
    for item in store.all_output_items(eval_engine, run_id):
        assert item.sample["model"] == LOCAL and item.sample["error"] is None
        assert item.sample["input"][0]["content"] in ("Name a colour.", "Say hi.")


def test_a_failing_python_grader_fails_its_item_not_the_run(eval_engine: Engine, project: str) -> None:
    source_code = (
        "def grade(sample, item):\n    if item['n'] == 1:\n        raise ValueError('item one')\n    return 1.0\n"
    )
    eval_id = make_eval(
        eval_engine,
        project,
        [{"type": "python", "name": "py", "source": source_code}],
        {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
    )
    rows = [{"item": {"n": n}, "sample": {"output_text": "x"}} for n in range(3)]
    run_id = make_run(
        eval_engine, project, eval_id, {"type": "jsonl", "source": {"type": "file_content", "content": rows}}
    )
    assert work(eval_engine, NoModel())
    run = run_row(eval_engine, project, eval_id, run_id)
    assert run.status == "completed"
    assert run.result_counts == {"total": 3, "errored": 1, "failed": 1, "passed": 2}
    failed = [i for i in store.all_output_items(eval_engine, run_id) if i.status == "fail"]
    assert failed[0].results[0]["error"] == "ValueError: item one"


class SlowFake:
    """A fake sampler, named as such: each answer waits, so a cancel lands mid-run."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0.05)
        return {"model": model, "choices": [{"message": {"content": "Dear customer"}}], "usage": {}}


def test_cancel_mid_run_stops_it(eval_engine: Engine, project: str) -> None:
    eval_id = make_eval(eval_engine, project, [LIKE_DEAR], {"type": "custom", "item_schema": {"type": "object"}})
    rows = [{"item": {"q": str(n)}} for n in range(200)]
    source = {
        "type": "completions",
        "model": "fake",
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        "source": {"type": "file_content", "content": rows},
    }
    run_id = make_run(eval_engine, project, eval_id, source)
    sampler = SlowFake()

    async def go() -> None:
        worker = RunWorker(eval_engine, sampler, lambda project, f: b"", concurrency=2, lease_seconds=0.6)
        task = asyncio.ensure_future(worker.run_once())
        while not store.all_output_items(eval_engine, run_id):
            await asyncio.sleep(0.02)
        direct_writes(eval_engine)(lambda conn: store.cancel_run(conn, project, eval_id, run_id, int(time.time())))
        await task

    asyncio.run(go())
    run = run_row(eval_engine, project, eval_id, run_id)
    assert run.status == "canceled"
    assert 0 < len(store.all_output_items(eval_engine, run_id)) < 200
    assert sampler.calls < 200

"""The Evals API through the real openai SDK against a live `stillroom serve` (with its worker), on both
databases: CRUD, Azure paths, a run grading stored answers, a run sampling the embedded model, cancel,
output items, and the grader test routes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from tests.admin import ADMIN, fake_upstream, make_client
from tests.conftest import AZURE_API_VERSION, GATEWAY_KEY, LOCAL_MODEL
from tests.live import FakeUpstream, LiveServer

__all__ = ["fake_upstream"]

GREETS = {
    "type": "string_check",
    "name": "greets",
    "input": "{{sample.output_text}}",
    "reference": "{{item.expected}}",
    "operation": "ilike",
}
CUSTOM = {
    "type": "custom",
    "item_schema": {"type": "object", "properties": {"expected": {"type": "string"}}},
    "include_sample_schema": True,
}


def wait_for_run(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {run.status}")


@pytest.fixture
def v1_client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/openai/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


def test_eval_crud_through_the_sdk(client: openai.OpenAI, tag: str) -> None:
    created = client.evals.create(
        name=f"crud-{tag}", data_source_config=CUSTOM, testing_criteria=[GREETS], metadata={"tag": tag}
    )
    assert created.id.startswith("eval_") and len(created.id) == 37
    schema = created.data_source_config.schema_
    assert schema["required"] == ["item", "sample"]
    assert schema["properties"]["item"] == CUSTOM["item_schema"]
    assert created.testing_criteria[0].id.startswith("greets-")
    assert client.evals.retrieve(created.id).name == f"crud-{tag}"
    assert created.id in [e.id for e in client.evals.list(order="desc", limit=100).data]
    updated = client.evals.update(created.id, name="renamed", metadata={"tag": tag, "v": "2"})
    assert (updated.name, updated.metadata) == ("renamed", {"tag": tag, "v": "2"})
    deleted = client.evals.delete(created.id)
    assert (deleted.deleted, deleted.eval_id) == (True, created.id)
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(created.id)


def test_azure_paths_serve_evals(azure_client: openai.AzureOpenAI, v1_client: openai.OpenAI, tag: str) -> None:
    preview = {"aoai-evals": "preview"}
    created = azure_client.evals.create(
        name=f"az-{tag}", data_source_config=CUSTOM, testing_criteria=[GREETS], extra_headers=preview
    )
    assert azure_client.evals.retrieve(created.id, extra_headers=preview).id == created.id
    assert v1_client.evals.retrieve(created.id, extra_headers=preview).name == f"az-{tag}"
    v1_client.evals.delete(created.id)


def test_a_run_grades_stored_answers(client: openai.OpenAI, tag: str) -> None:
    for question in ("Say hello.", "Say goodbye."):
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": question}],
            store=True,
            metadata={"eval": tag},
            max_completion_tokens=8,
            temperature=0,
        )
    nonempty = {
        "type": "string_check",
        "name": "answered",
        "input": "{{sample.output_text}}",
        "reference": "",
        "operation": "ne",
    }
    asked = {
        "type": "string_check",
        "name": "asked",
        "input": "{{item.input.0.content}}",
        "reference": "hello",
        "operation": "ilike",
    }
    ev = client.evals.create(
        name=f"stored-{tag}",
        data_source_config={"type": "logs", "metadata": {"eval": tag}},
        testing_criteria=[nonempty, asked],
    )
    assert ev.data_source_config.type == "logs"
    run = client.evals.runs.create(
        ev.id, data_source={"type": "completions", "source": {"type": "stored_completions", "metadata": {"eval": tag}}}
    )
    assert run.status == "queued" and run.report_url.endswith(f"/console/evals/{ev.id}/runs/{run.id}")
    done = wait_for_run(client, ev.id, run.id)
    assert done.status == "completed"
    assert (done.result_counts.total, done.result_counts.passed, done.result_counts.failed) == (2, 1, 1)
    per = {r.testing_criteria.split("-")[0]: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert per == {"answered": (2, 0), "asked": (1, 1)}
    failed = client.evals.runs.output_items.list(done.id, eval_id=ev.id, status="fail")
    assert [i.datasource_item["input"][0]["content"] for i in failed.data] == ["Say goodbye."]
    one = client.evals.runs.output_items.retrieve(failed.data[0].id, eval_id=ev.id, run_id=done.id)
    assert one.status == "fail" and one.sample.model == LOCAL_MODEL
    assert [r.passed for r in one.results] == [True, False]
    assert client.evals.runs.list(ev.id).data[0].id == done.id
    assert client.evals.runs.delete(done.id, eval_id=ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(done.id, eval_id=ev.id)


def test_a_completions_run_samples_the_embedded_model(client: openai.OpenAI, tag: str) -> None:
    ev = client.evals.create(name=f"sample-{tag}", data_source_config=CUSTOM, testing_criteria=[GREETS])
    rows = [{"item": {"input": [{"role": "user", "content": "Say hi"}], "expected": ""}} for _ in range(2)]
    run = client.evals.runs.create(
        ev.id,
        data_source={
            "type": "completions",
            "model": LOCAL_MODEL,
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 6, "seed": 3},
            "source": {"type": "file_content", "content": rows},
        },
    )
    done = wait_for_run(client, ev.id, run.id)
    assert done.status == "completed" and done.result_counts.passed == 2
    usage = done.per_model_usage
    assert [u.model_name for u in usage] == [LOCAL_MODEL] and usage[0].invocation_count == 2
    items = client.evals.runs.output_items.list(done.id, eval_id=ev.id).data
    assert all(i.sample.model == LOCAL_MODEL and i.sample.output[0].content for i in items)


def test_cancel_mid_run(client: openai.OpenAI, tag: str) -> None:
    ev = client.evals.create(name=f"cancel-{tag}", data_source_config=CUSTOM, testing_criteria=[GREETS])
    rows = [{"item": {"q": f"Count to {n}.", "expected": ""}} for n in range(60)]
    run = client.evals.runs.create(
        ev.id,
        data_source={
            "type": "completions",
            "model": LOCAL_MODEL,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
            "sampling_params": {"max_completion_tokens": 24},
            "source": {"type": "file_content", "content": rows},
        },
    )
    deadline = time.monotonic() + 120
    while client.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.total == 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    canceled = client.evals.runs.cancel(run.id, eval_id=ev.id)
    assert canceled.status == "canceled"
    time.sleep(1)  # let the worker notice; the count must stay well short of the 60 items
    assert client.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.total < 60


def test_grader_test_routes(client: openai.OpenAI) -> None:
    grader = {
        "type": "python",
        "name": "len",
        "source": "def grade(sample, item):\n    return len(sample['output_text']) / 10\n",
    }
    result = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="hello")
    assert result.reward == 0.5 and result.metadata.type == "python"
    assert not result.metadata.errors.python_grader_runtime_error
    boom = client.fine_tuning.alpha.graders.run(
        grader={**grader, "source": "def grade(sample, item):\n    raise KeyError('x')\n"}, model_sample="hello"
    )
    assert (
        boom.metadata.errors.python_grader_runtime_error
        and "KeyError" in boom.metadata.errors.python_grader_runtime_error_details
    )
    multi = {
        "type": "multi",
        "name": "m",
        "graders": {
            "a": {
                "type": "string_check",
                "name": "a",
                "input": "{{sample.output_text}}",
                "reference": "hello",
                "operation": "eq",
            }
        },
        "calculate_output": "0.5 * a",
    }
    assert client.fine_tuning.alpha.graders.run(grader=multi, model_sample="hello").reward == 0.5
    assert client.fine_tuning.alpha.graders.validate(grader=multi).grader.type == "multi"
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.alpha.graders.validate(grader={**multi, "calculate_output": "a.real"})
    assert info.value.param == "calculate_output"


def test_azure_cancel_path_and_api_version(server: LiveServer, tag: str) -> None:
    import httpx

    headers = {"api-key": GATEWAY_KEY, "aoai-evals": "preview"}
    params = {"api-version": AZURE_API_VERSION}
    with httpx.Client(base_url=server.url, headers=headers, params=params) as http:
        ev = http.post("/openai/evals", json={"data_source_config": CUSTOM, "testing_criteria": [GREETS]})
        assert ev.status_code == 201, ev.text
        rows = [{"item": {"expected": "x"}, "sample": {"output_text": "x"}}]
        run = http.post(
            f"/openai/evals/{ev.json()['id']}/runs",
            json={"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}},
        )
        assert run.status_code == 201
        old_style = http.post(f"/openai/evals/{ev.json()['id']}/runs/{run.json()['id']}")  # the spec's cancel path
        assert old_style.status_code == 200 and old_style.json()["object"] == "eval.run"


# --- in process: what the fuzzer found -------------------------------------------------------------


@pytest.fixture(scope="module")
def grader_client(
    db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("graders"), fake_upstream, db_url) as c:
        yield c


def test_a_template_index_in_non_ascii_digits_is_a_missing_reference_not_a_500(grader_client: TestClient) -> None:
    """`{{item.a.²}}` on a list: `"²".isdigit()` is true and `int("²")` raises, a 500 before."""
    grader = {"type": "string_check", "name": "g", "input": "{{item.a.\u00b2}}", "reference": "x", "operation": "eq"}
    body = {"grader": grader, "model_sample": "x", "item": {"a": ["x", "y", "z"]}}
    response = grader_client.post("/v1/fine_tuning/alpha/graders/run", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["reward"] == 0.0
    assert response.json()["metadata"]["errors"]["invalid_variable_error"] is True

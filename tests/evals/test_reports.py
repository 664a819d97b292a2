"""An eval's runs compared through `GET /v1/evals/{eval_id}/comparison`, a stored-completions source that
names its completions by id, and a run's report_url leading into the console; on both databases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stillroom.evals.comparison import wilson_interval
from tests.conftest import GATEWAY_KEY, LOCAL_MODEL
from tests.envelope import assert_openai_error
from tests.live import LiveServer

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
ANSWERED = {
    "type": "string_check",
    "name": "answered",
    "input": "{{sample.output_text}}",
    "reference": "",
    "operation": "ne",
}
ASKED = {
    "type": "string_check",
    "name": "asked",
    "input": "{{item.user_text}}",
    "reference": "hello",
    "operation": "ilike",
}


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + "/v1", headers=AUTH, timeout=60) as client:
        yield client


def _store(http: httpx.Client, tag: str, question: str) -> str:
    body = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": question}],
        "store": True,
        "metadata": {"report": tag},
        "max_completion_tokens": 4,
        "temperature": 0,
    }
    made = http.post("/chat/completions", json=body)
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def _finished(http: httpx.Client, eval_id: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        run: dict[str, Any] = http.get(f"/evals/{eval_id}/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish")


def test_runs_over_chosen_ids_are_compared_per_criterion(http: httpx.Client, tag: str) -> None:
    hello, goodbye, _left_out = (_store(http, tag, q) for q in ("Say hello.", "Say goodbye.", "Say nothing."))
    ev = http.post(
        "/evals",
        json={
            "data_source_config": {"type": "logs", "metadata": {"report": tag}},
            "testing_criteria": [ANSWERED, ASKED],
        },
    ).json()
    source = {"type": "stored_completions", "metadata": {"report": tag}, "ids": [hello, goodbye]}
    runs = []
    for name in ("first", "second"):
        made = http.post(
            f"/evals/{ev['id']}/runs", json={"name": name, "data_source": {"type": "completions", "source": source}}
        )
        assert made.status_code == 201, made.text
        runs.append(made.json())
    for run in runs:
        done = _finished(http, ev["id"], run["id"])
        assert done["status"] == "completed" and done["result_counts"]["total"] == 2  # the third is not selected

    report = http.get(f"/evals/{ev['id']}/comparison").json()
    assert report["object"] == "eval.comparison" and report["items"] == 2
    assert [r["name"] for r in report["runs"]] == ["first", "second"]
    by_name = {c["name"]: c for c in report["criteria"]}
    assert list(by_name) == ["all criteria", "answered", "asked"]
    asked = by_name["asked"]["subjects"][0]
    assert (asked["n"], asked["passed"], asked["pass_rate"]) == (2, 1, 0.5)
    assert (asked["low"], asked["high"]) == pytest.approx(wilson_interval(1, 2))
    [test] = by_name["all criteria"]["tests"]
    assert (test["baseline"], test["subject"]) == (runs[0]["id"], runs[1]["id"])
    assert (test["difference"], test["p_value"], test["significant"]) == (0.0, 1.0, False)

    reversed_ = http.get(
        f"/evals/{ev['id']}/comparison", params=[("run_ids", runs[1]["id"]), ("run_ids", runs[0]["id"])]
    )
    assert [r["id"] for r in reversed_.json()["runs"]] == [runs[1]["id"], runs[0]["id"]]
    unknown = http.get(f"/evals/{ev['id']}/comparison", params={"run_ids": "evalrun_nosuch"})
    assert_openai_error(unknown, 400, "invalid_request_error", "run_ids")
    assert_openai_error(http.get("/evals/eval_nosuch/comparison"), 404, "invalid_request_error", "eval_id")


def test_report_url_redirects_into_the_console(http: httpx.Client, server: LiveServer) -> None:
    rows = [{"item": {"x": "1"}, "sample": {"output_text": "1"}}]
    ev = http.post(
        "/evals",
        json={
            "data_source_config": {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
            "testing_criteria": [ANSWERED],
        },
    ).json()
    run = http.post(
        f"/evals/{ev['id']}/runs",
        json={"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}},
    ).json()
    answer = httpx.get(run["report_url"], follow_redirects=False)
    assert answer.status_code == 303
    target = httpx.URL(run["report_url"]).join(answer.headers["location"])
    assert str(target) == f"{server.url}/#/evals/{ev['id']}/runs/{run['id']}"

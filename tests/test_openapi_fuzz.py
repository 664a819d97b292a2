"""A short schemathesis run against a live `stillroom serve`, generated from the server's own /openapi.json.

Every model the server knows points at THE fake upstream, so generated requests never run a real model
(and the fake's `fake` model never fails, so no 502/504 is expected either). About 6 cases per operation,
positive and negative; each response goes through every check, and each check is its own test: no 5xx,
every status code and content type documented, every documented response schema and header holds, and
the server still answers /health afterwards. `bench/fuzz.py` is the long run (over 1,000 cases).

The cases are driven with `APIOperation.as_strategy()` and Hypothesis rather than `schema.parametrize()`:
schemathesis 4.32's lazy pytest loader (`schemathesis.pytest.from_fixture`, the only way to fuzz a server
started by a fixture) sets `request.node._nodeid`, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.envelope import assert_openai_error
from tests.live import FakeUpstream, LiveServer, fake_models_config, start_fake_upstream, start_server

FUZZ_KEY = "sk-test-fuzz-0123456789"
# Every name points at the fake's canned answer; none runs a model.
FUZZ_MODELS: dict[str, tuple[str, float | None]] = {
    "fake": ("fake", 5.0),
    "gpt-4o-mini": ("fake", 5.0),
    "smollm2-135m-instruct": ("fake", 5.0),
}
INTEGER_FIELDS = ("n", "max_tokens", "max_completion_tokens", "seed", "top_logprobs")
MAX_EXAMPLES = 4  # per operation and generation mode: about 6 cases per operation


def no_server_error(_ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Any 5xx fails: the fake's `fake` model never fails, so not even the documented 502/504 may appear."""
    if response.status_code >= 500:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}: {response.text[:300]}")
    return None


CONFORMANCE_CHECKS: dict[str, Callable[..., bool | None]] = {
    "no_server_error": no_server_error,
    "status_code_conformance": status_code_conformance,
    "content_type_conformance": content_type_conformance,
    "response_headers_conformance": response_headers_conformance,
    "response_schema_conformance": response_schema_conformance,
}
# The long run also checks that the schema's constraints are the server's: what it allows is accepted,
# what it forbids is refused.
ALL_CHECKS = {
    **CONFORMANCE_CHECKS,
    "positive_data_acceptance": positive_data_acceptance,
    "negative_data_rejection": negative_data_rejection,
}


@dataclass
class FuzzReport:
    cases: int = 0
    operations: int = 0  # in the schema
    by_operation: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_status: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    # check -> "METHOD /path -> status: title" -> [count, one reproducing curl command, its response's start]
    failures: dict[str, dict[str, list[Any]]] = field(default_factory=lambda: defaultdict(dict))
    errors: list[str] = field(default_factory=list)  # cases that could not be generated or sent
    seconds: float = 0.0

    def failed(self, check: str) -> list[str]:
        return [
            f"{key} (x{count})\n    {curl}\n    -> {answer}"
            for key, (count, curl, answer) in sorted(self.failures.get(check, {}).items())
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "seconds": round(self.seconds, 1),
            "cases_by_operation": dict(sorted(self.by_operation.items())),
            "responses_by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "failures_by_check": {
                check: sum(slot[0] for slot in found.values()) for check, found in sorted(self.failures.items())
            },
            "unique_failures": {
                check: [
                    {"case": key, "count": count, "curl": curl, "response": answer}
                    for key, (count, curl, answer) in sorted(found.items())
                ]
                for check, found in sorted(self.failures.items())
            },
            "errors": self.errors,
        }


def load_fuzz_schema(server_url: str, api_key: str, known_ids: dict[str, list[str]]) -> OpenApiSchema:
    """The server's live schema, set up to send the key and to reach real data often enough:
    3 generated values in 4 are swapped for a known model or deployment, or a known id of the path
    parameter's name (`known_ids`, from `seed_data`: completions, files, evals, runs, output items)."""
    config = schemathesis.Config.from_dict(
        {
            "headers": {"authorization": f"Bearer {api_key}"},
            "suppress-health-check": ["all"],
            # reproducing curl commands keep `max_tokens` & co. (a "token" is sensitive by default), not the key
            "output": {"sanitization": {"keys-to-sanitize": ["authorization"], "sensitive-markers": ["authorization"]}},
        }
    )
    schema = schemathesis.openapi.from_url(server_url + "/openapi.json", config=config, timeout=30)
    models = sorted(FUZZ_MODELS)

    def known(value: Any, choices: list[str]) -> Any:
        if not isinstance(value, str) or not value or not choices or value in choices:
            return value
        pick = zlib.crc32(value.encode("utf-8", "surrogatepass"))
        return choices[pick % len(choices)] if pick % 4 else value

    @schema.hook
    def map_case(_context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
        if case.path_parameters:
            for name, choices in {"deployment": models, "model": models, **known_ids}.items():
                if name in case.path_parameters:
                    case.path_parameters[name] = known(case.path_parameters[name], choices)
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = known(case.body["model"], models)
        positive = case.meta is not None and case.meta.generation.mode == schemathesis.GenerationMode.POSITIVE
        if positive and isinstance(case.body, dict) and "messages" in case.body:
            body = case.body
            if zlib.crc32(repr(sorted(body)).encode("utf-8", "surrogatepass")) % 2:
                # Reach the store: half the positive creates ask for it, and keep two rules the schema does
                # not state (the other half still reports them): `stream_options` only with `stream: true`,
                # and integer fields as JSON integers (JSON Schema counts 3.0 as an integer; the server
                # does not).
                body.setdefault("store", True)
                if body.get("stream") is not True:
                    body.pop("stream_options", None)
                for name in INTEGER_FIELDS:
                    value = body.get(name)
                    if isinstance(value, float) and value.is_integer():
                        body[name] = int(value)
        return case

    return schema


def run_fuzz(
    schema: OpenApiSchema,
    checks: dict[str, Callable[..., bool | None]],
    *,
    max_examples: int,
    seed: int | None = None,
) -> FuzzReport:
    """`max_examples` positive and as many negative cases per operation, each response through every check."""
    report = FuzzReport()
    started = time.monotonic()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            report.operations += 1
            modes = [schemathesis.GenerationMode.POSITIVE]
            if operation.query or operation.body:  # a lone string path parameter has no invalid value
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:
                test = given(case=operation.as_strategy(generation_mode=mode))(
                    lambda case: _send_and_check(case, session, checks, report)
                )
                test = settings(
                    max_examples=max_examples,
                    phases=[Phase.generate],
                    deadline=None,
                    database=None,
                    derandomize=seed is None,
                    suppress_health_check=list(HealthCheck),
                    verbosity=Verbosity.quiet,
                )(test)
                if seed is not None:
                    test = hypothesis_seed(seed)(test)
                try:
                    test()
                except Exception as exc:
                    report.errors.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}"[:500])
    report.seconds = time.monotonic() - started
    return report


def _send_and_check(
    case: schemathesis.Case,
    session: requests.Session,
    checks: dict[str, Callable[..., bool | None]],
    report: FuzzReport,
) -> None:
    headers = dict(case.operation.schema.config.headers or {})
    response = case.call(session=session, timeout=30)
    label = case.operation.label
    report.cases += 1
    report.by_operation[label] += 1
    report.by_status[response.status_code] += 1
    for name, check in checks.items():
        try:
            case.validate_response(response, checks=[check], headers=headers)
        except (FailureGroup, Failure, AssertionError) as exc:
            failures = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            for failure in failures:
                title = getattr(failure, "title", None) or str(failure).splitlines()[0][:200]
                key = f"{label} -> {response.status_code}: {title}"
                slot = report.failures[name].setdefault(key, [0, case.as_curl_command(headers), response.text[:300]])
                slot[0] += 1


def seed_data(server_url: str, api_key: str, count: int) -> dict[str, list[str]]:
    """Data for the fuzzer's retrieve/update/delete calls to find, by path parameter name: stored
    completions, files (fine-tuning JSONL and batch), evals with a run each (graded by the server's worker
    while the fuzzer runs, so output items appear), and a project of their own."""
    with openai.OpenAI(base_url=server_url + "/v1", api_key=api_key, max_retries=0) as client:
        completions = [
            client.chat.completions.create(
                model="fake",
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Seed {i}"}],
                store=True,
                metadata={"seed": str(i)},
            ).id
            for i in range(count)
        ]
        jsonl = b"".join(
            orjson.dumps({"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}]})
            + b"\n"
            for i in range(12)
        )
        files = [
            client.files.create(file=(f"seed{i}.jsonl", jsonl), purpose="fine-tune" if i % 2 else "batch").id
            for i in range(count)
        ]
        evals, runs = [], []
        for i in range(count):
            ev = client.evals.create(
                name=f"seed {i}",
                data_source_config={"type": "custom", "item_schema": {"type": "object"}},
                testing_criteria=[
                    {"type": "string_check", "name": "eq", "input": "{{item.a}}", "reference": "x", "operation": "eq"}
                ],
            )
            evals.append(ev.id)
            content = [{"item": {"a": "x" if j % 2 else "y"}} for j in range(3)]
            run = client.evals.runs.create(
                ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
            )
            runs.append(run.id)
        project = httpx.post(
            server_url + "/v1/organization/projects",
            json={"name": "fuzz"},
            headers={"authorization": f"Bearer {api_key}"},
            timeout=30,
        ).json()["id"]
    return {
        "completion_id": completions,
        "file_id": files,
        "eval_id": evals,
        "run_id": runs,
        "project_id": [project],
    }


# --- the short run ---


@pytest.fixture(scope="module")
def fuzz_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = start_fake_upstream(tmp_path_factory.mktemp("fuzz-fake") / "fake_upstream.log")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def fuzz_server(
    db_url: str, fuzz_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = fake_models_config(fuzz_upstream.url, FUZZ_MODELS)
    live = start_server(tmp, db_url, config=config, api_key=FUZZ_KEY, name="fuzz")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def fuzz_report(fuzz_server: LiveServer) -> FuzzReport:
    schema = load_fuzz_schema(fuzz_server.url, FUZZ_KEY, seed_data(fuzz_server.url, FUZZ_KEY, 6))
    return run_fuzz(schema, CONFORMANCE_CHECKS, max_examples=MAX_EXAMPLES)


def test_fuzz_ran_about_6_cases_over_every_operation(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.errors == []
    assert fuzz_report.operations >= 26
    assert len(fuzz_report.by_operation) == fuzz_report.operations
    assert 4 * fuzz_report.operations <= fuzz_report.cases <= 8 * fuzz_report.operations, fuzz_report.as_json()
    assert fuzz_report.by_status.get(200, 0) >= 20, fuzz_report.as_json()  # real answers, not only refusals


@pytest.mark.parametrize("check", list(CONFORMANCE_CHECKS))
def test_fuzz_check_holds(fuzz_report: FuzzReport, check: str) -> None:
    failed = fuzz_report.failed(check)
    assert not failed, f"{check} failed on {len(failed)} distinct cases:\n" + "\n".join(failed)


def test_fuzzed_server_still_answers(fuzz_server: LiveServer, fuzz_report: FuzzReport) -> None:
    assert fuzz_server.process.poll() is None
    health = httpx.get(fuzz_server.url + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["store"]["failed"] == 0
    assert "unhandled error" not in fuzz_server.log()


# --- what the fuzzer led to: NUL characters, which PostgreSQL cannot hold in a text value ---
# (after the health check above, so that its `store.failed == 0` is about the fuzz run alone)

NUL_REQUESTS = [
    ("GET", "/v1/chat/completions?model=%00"),
    ("GET", "/v1/chat/completions?after=chatcmpl-%00"),
    ("GET", "/v1/chat/completions?metadata%5Bk%5D=%00"),
    ("GET", "/v1/chat/completions/chatcmpl-%00"),
    ("GET", "/v1/chat/completions/chatcmpl-%00/messages"),
    ("POST", "/v1/chat/completions/chatcmpl-%00"),
    ("DELETE", "/v1/chat/completions/chatcmpl-%00"),
]


@pytest.mark.parametrize(("method", "path"), NUL_REQUESTS)
def test_nul_in_an_id_or_filter_is_not_a_server_error(fuzz_server: LiveServer, method: str, path: str) -> None:
    body = {"metadata": {"k": "v"}} if method == "POST" else None
    headers = {"authorization": f"Bearer {FUZZ_KEY}"}
    response = httpx.request(method, fuzz_server.url + path, json=body, headers=headers, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code == 200:  # a page (SQLite compares the NUL like any other character)
        assert response.json()["object"] == "list"
    else:
        param = "completion_id" if "/chat/completions/" in path else path.split("?")[1].split("=")[0]
        param = "metadata.k" if param.startswith("metadata") else param
        assert_openai_error(response, response.status_code, "invalid_request_error", param)
        assert response.status_code in (400, 404)


@pytest.mark.parametrize("where", ["create", "update"])
def test_nul_in_metadata_is_refused_or_stored(fuzz_server: LiveServer, where: str) -> None:
    """Never the SQLite/PostgreSQL split of "accepted, stored" against "accepted, silently not stored" or 500."""
    metadata = {"k": "a\x00b"}
    with httpx.Client(base_url=fuzz_server.url, headers={"authorization": f"Bearer {FUZZ_KEY}"}, timeout=10) as http:
        body = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "store": True}
        if where == "create":
            response = http.post("/v1/chat/completions", json={**body, "metadata": metadata})
        else:
            created = http.post("/v1/chat/completions", json=body)
            assert created.headers["x-stillroom-stored"] == "true"
            response = http.post(f"/v1/chat/completions/{created.json()['id']}", json={"metadata": metadata})
        if response.status_code == 400:
            assert_openai_error(response, 400, "invalid_request_error", "metadata.k")
            return
        assert response.status_code == 200, response.text
        if where == "create":
            assert response.headers["x-stillroom-stored"] == "true"
        stored = http.get(f"/v1/chat/completions/{response.json()['id']}")
        assert stored.status_code == 200
        assert stored.json()["metadata"] == metadata

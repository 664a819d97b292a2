"""Distill datasets and eval `stored_completions` sources take the list's whole filter, on both databases:
`search`, `created_after` and `created_before` with metadata, parsed by the list's own code, so a dataset
and an eval hold exactly what the list shows for the same filter; `ids` with a filter keep only the ids
that match; a bad filter value is the list's 400 naming the field (under `data_source.source.` for an
eval), leaving nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from stillroom.evals.datasets import stored_completion_items
from stillroom.store.db import make_engine
from stillroom.store.evals import count_eval_rows
from stillroom.store.files import count_files
from tests.admin import CHAT, bearer, fake_upstream, make_client, new_key, new_project
from tests.api.test_stored_search import _ids, _next_second
from tests.conftest import NewDatabase
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]

NOT_EMPTY = {
    "type": "string_check",
    "name": "answered",
    "input": "{{sample.output_text}}",
    "reference": "",
    "operation": "ne",
}


@pytest.fixture(scope="module")
def db_url(db_url: str, new_database: NewDatabase) -> str:
    """A database of its own: the runs made here stay queued (this client runs no worker), and a worker of
    another module's server on the shared database would claim them and write their output items."""
    return new_database(db_url)


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("selection")
    with make_client(tmp, fake_upstream, db_url, files_dir=tmp / "files") as c:
        yield c


@dataclass
class Stored:
    project: str
    key: dict[str, str]
    early: list[str]  # three peppermint questions
    boundary: float  # the second from which the rest were stored
    chamomile: list[str]  # ten chamomile questions
    late: str  # one more peppermint question


def _store(client: TestClient, key: dict[str, str], text: str) -> str:
    body = CHAT | {"store": True, "metadata": {"batch": "b"}, "messages": [{"role": "user", "content": text}]}
    response = client.post("/v1/chat/completions", json=body, headers=key)
    assert response.headers["x-stillroom-stored"] == "true"
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def stored(client: TestClient) -> Stored:
    project = new_project(client)
    key = bearer(new_key(client, project, "contributor"))
    early = [_store(client, key, f"Is peppermint tea good? ({n})") for n in range(3)]
    boundary = _next_second()
    chamomile = [_store(client, key, f"Is chamomile tea good? ({n})") for n in range(10)]
    late = _store(client, key, "Is peppermint tea good? (3)")
    assert len(_ids(client, key)) == 14
    return Stored(project, key, early, boundary, chamomile, late)


def _dataset(client: TestClient, stored: Stored, **selection: Any) -> Any:
    body = {"metadata": {"batch": "b"}, "drop_truncated": False, **selection}
    return client.post("/v1/fine_tuning/datasets", json=body, headers=stored.key)


SCOPES = {
    "search": ({"search": "chamomile"}, lambda s: s.chamomile),
    "search-prefix": ({"search": "pepper*"}, lambda s: [*s.early, s.late]),
    "after": ({"created_after": "boundary"}, lambda s: [*s.chamomile, s.late]),
    "after-and-search": ({"created_after": "boundary", "search": "chamomile"}, lambda s: s.chamomile),
    "before": ({"created_before": "boundary"}, lambda s: s.early),
}


def _filled(selection: dict[str, Any], stored: Stored) -> dict[str, Any]:
    return {k: stored.boundary if v == "boundary" else v for k, v in selection.items()}


@pytest.mark.parametrize("scope", ["search", "after", "after-and-search"])
def test_a_dataset_holds_what_the_list_shows_for_the_same_filter(
    client: TestClient, stored: Stored, scope: str
) -> None:
    selection, expected = SCOPES[scope]
    selection = _filled(selection, stored)
    listed = _ids(client, stored.key, **{"metadata[batch]": "b", **{k: str(v) for k, v in selection.items()}})
    assert listed == expected(stored)
    response = _dataset(client, stored, **selection)
    assert response.status_code == 200, response.text
    counts = response.json()["counts"]
    assert counts["selected"] == counts["training"] == len(listed)


def test_a_dataset_under_ten_says_how_many_the_filter_matched(client: TestClient, stored: Stored, db_url: str) -> None:
    engine = make_engine(db_url)
    before = count_files(engine)
    response = _dataset(client, stored, created_before=stored.boundary)
    error = assert_openai_error(response, 400, "invalid_request_error", "selection")
    assert "3 stored completion(s) matched the selection" in error["message"]
    assert count_files(engine) == before
    engine.dispose()


def test_dataset_ids_with_a_search_keep_only_the_matching_ids(client: TestClient, stored: Stored) -> None:
    response = _dataset(client, stored, ids=[*stored.early, *stored.chamomile], search="chamomile")
    assert response.status_code == 200, response.text
    assert response.json()["counts"]["selected"] == 10
    out_of_range = _dataset(client, stored, ids=[*stored.early, *stored.chamomile], created_before=stored.boundary)
    assert (
        "3 stored completion(s) matched"
        in assert_openai_error(out_of_range, 400, "invalid_request_error", "selection")["message"]
    )


@pytest.mark.parametrize(
    ("selection", "param"),
    [
        ({"search": "***"}, "search"),
        ({"search": 7}, "search"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": -1}, "created_before"),
        ({"created_after": True}, "created_after"),
        ({"model": ["m"]}, "model"),
    ],
)
def test_a_bad_dataset_filter_is_the_lists_400(
    client: TestClient, stored: Stored, db_url: str, selection: dict[str, Any], param: str
) -> None:
    engine = make_engine(db_url)
    before = count_files(engine)
    assert_openai_error(_dataset(client, stored, **selection), 400, "invalid_request_error", param)
    assert count_files(engine) == before
    engine.dispose()


def _eval(client: TestClient, stored: Stored) -> str:
    body = {
        "name": "scope",
        "data_source_config": {"type": "stored_completions", "metadata": {"batch": "b"}},
        "testing_criteria": [NOT_EMPTY],
    }
    response = client.post("/v1/evals", json=body, headers=stored.key)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _run(client: TestClient, stored: Stored, eval_id: str, source: dict[str, Any]) -> Any:
    body = {"data_source": {"type": "completions", "source": {"type": "stored_completions", **source}}}
    return client.post(f"/v1/evals/{eval_id}/runs", json=body, headers=stored.key)


@pytest.mark.parametrize("scope", list(SCOPES))
def test_an_eval_source_selects_what_the_list_shows_for_the_same_filter(
    client: TestClient, stored: Stored, db_url: str, scope: str
) -> None:
    selection, expected = SCOPES[scope]
    source = {"metadata": {"batch": "b"}, **_filled(selection, stored)}
    response = _run(client, stored, _eval(client, stored), source)
    assert response.status_code == 201, response.text
    kept = response.json()["data_source"]["source"]
    assert {k: kept[k] for k in source} == source  # the run shows its filter as given
    engine = make_engine(db_url)
    items = stored_completion_items(engine, stored.project, kept)  # what the worker will grade
    engine.dispose()
    assert [i.item["id"] for i in items] == expected(stored)


def test_eval_source_ids_with_a_filter_keep_only_the_matching_ids(
    client: TestClient, stored: Stored, db_url: str
) -> None:
    source = {"ids": [stored.late, *stored.chamomile[:2], stored.early[0]], "search": "peppermint"}
    response = _run(client, stored, _eval(client, stored), source)
    assert response.status_code == 201, response.text
    engine = make_engine(db_url)
    items = stored_completion_items(engine, stored.project, response.json()["data_source"]["source"])
    ranged = stored_completion_items(
        engine, stored.project, {"ids": [*stored.early, stored.late], "created_after": stored.boundary}
    )
    engine.dispose()
    assert [i.item["id"] for i in items] == [stored.late, stored.early[0]]  # in the order of `ids`
    assert [i.item["id"] for i in ranged] == [stored.late]


@pytest.mark.parametrize(
    ("source", "param"),
    [
        ({"search": "***"}, "data_source.source.search"),
        ({"search": ["tea"]}, "data_source.source.search"),
        ({"created_after": "yesterday"}, "data_source.source.created_after"),
        ({"created_before": 1e300}, "data_source.source.created_before"),
        ({"metadata": {"k": 1}}, "data_source.source.metadata.k"),
        ({"model": 3}, "data_source.source.model"),
    ],
)
def test_a_bad_eval_source_filter_is_the_lists_400_under_its_path(
    client: TestClient, stored: Stored, db_url: str, source: dict[str, Any], param: str
) -> None:
    eval_id = _eval(client, stored)
    engine = make_engine(db_url)
    before = count_eval_rows(engine)
    assert_openai_error(_run(client, stored, eval_id, source), 400, "invalid_request_error", param)
    assert count_eval_rows(engine) == before
    engine.dispose()

"""The list's Stillroom extensions over HTTP on both databases: `search`, `created_after`, `created_before`
(combined with metadata, model and keyset pages), the same filters in delete by filter and its dry run, and
the 400s that name the parameter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from stillroom.store.completions import count_rows
from tests.admin import CHAT, bearer, fake_upstream, make_client, new_key, new_project
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("search"), fake_upstream, db_url) as c:
        yield c


@pytest.fixture
def key(client: TestClient) -> dict[str, str]:
    return bearer(new_key(client, new_project(client), "contributor"))


def _store(client: TestClient, key: dict[str, str], text: str, **meta: str) -> str:
    body = CHAT | {"store": True, "metadata": meta, "messages": [{"role": "user", "content": text}]}
    response = client.post("/v1/chat/completions", json=body, headers=key)
    assert response.headers["x-stillroom-stored"] == "true"
    return str(response.json()["id"])


def _ids(client: TestClient, key: dict[str, str], **params: str) -> list[str]:
    response = client.get("/v1/chat/completions", params={"limit": "100", **params}, headers=key)
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


def _next_second() -> float:
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)
    return float(start + 1)


def test_search_combines_with_metadata_and_pages(client: TestClient, key: dict[str, str]) -> None:
    ids = [_store(client, key, f"Refund for order {n}", shop="a" if n % 2 else "b") for n in range(5)]
    other = _store(client, key, "Where is my parcel?", shop="a")
    assert _ids(client, key, search="refund") == ids
    assert _ids(client, key, search="REFUNDS") == []
    assert _ids(client, key, search="refun*", order="desc") == ids[::-1]
    assert _ids(client, key, search="refund", **{"metadata[shop]": "a"}) == [ids[1], ids[3]]
    assert _ids(client, key, search="parcel") == [other]
    first = client.get("/v1/chat/completions", params={"search": "refund", "limit": "2"}, headers=key).json()
    assert [c["id"] for c in first["data"]] == ids[:2] and first["has_more"] is True
    assert _ids(client, key, search="refund", after=first["last_id"]) == ids[2:]


def test_time_range_filters_by_creation_second(client: TestClient, key: dict[str, str]) -> None:
    early = _store(client, key, "early")
    boundary = _next_second()
    late = [_store(client, key, "late") for _ in range(2)]
    assert _ids(client, key, created_after=str(boundary)) == late
    assert _ids(client, key, created_before=str(boundary)) == [early]
    assert _ids(client, key, created_after=str(boundary), created_before=str(boundary + 3600), search="late") == late
    assert _ids(client, key, created_after=str(boundary + 3600)) == []


def test_delete_by_search_and_time_counts_first_then_deletes_only_the_matches(
    client: TestClient, key: dict[str, str]
) -> None:
    project = new_project(client)
    key = bearer(new_key(client, project, "contributor"))
    keep = _store(client, key, "keep this one")
    boundary = _next_second()
    doomed = [_store(client, key, "forget this one") for _ in range(2)]
    spared = _store(client, key, "keep this too")
    path = f"/v1/organization/projects/{project}/chat_completions/delete"
    body = {"search": "forget", "created_after": boundary}
    dry = client.post(path, json=body | {"dry_run": True}, headers=key).json()
    assert (dry["matched"], dry["deleted"], dry["dry_run"]) == (2, 0, True)
    done = client.post(path, json=body, headers=key).json()
    assert done["deleted"] == 2
    assert _ids(client, key) == [keep, spared]
    assert _ids(client, key, search="forget") == []
    assert not set(doomed) & set(_ids(client, key))


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"search": "-- !"}, "search"),
        ({"search": "x" * 1001}, "search"),
        ({"search": " ".join(["w"] * 17)}, "search"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "-1"}, "created_before"),
        ({"created_after": "nan"}, "created_after"),
        ({"created_before": "1e300"}, "created_before"),
    ],
)
def test_bad_search_or_time_is_a_400_naming_it(
    client: TestClient, key: dict[str, str], params: dict[str, str], param: str
) -> None:
    before = count_rows(client.app.state.services.engine)  # type: ignore[attr-defined]
    response = client.get("/v1/chat/completions", params=params, headers=key)
    assert_openai_error(response, 400, "invalid_request_error", param)
    assert count_rows(client.app.state.services.engine) == before  # type: ignore[attr-defined]


def test_bad_search_in_delete_by_filter_is_a_400(client: TestClient) -> None:
    project = new_project(client)
    response = client.post(
        f"/v1/organization/projects/{project}/chat_completions/delete",
        json={"search": 3, "dry_run": True},
        headers=bearer(new_key(client, project, "contributor")),
    )
    assert_openai_error(response, 400, "invalid_request_error", "search")

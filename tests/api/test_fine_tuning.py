"""/v1/fine_tuning route detail, in process, on both databases: a `limit` in non-ASCII digits (which
`str.isdigit` accepts and `int` refuses) was a 500 on the job lists; it is a 400 naming `limit`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from stillroom.store.db import make_engine
from stillroom.store.jobs import count_jobs
from tests.admin import ADMIN, fake_upstream, make_client
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("fine-tuning")
    with make_client(tmp, fake_upstream, db_url, files_dir=tmp / "files") as c:
        yield c


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "0", "101"])
def test_a_job_list_limit_that_is_not_1_to_100_in_ascii_digits_is_a_400(
    client: TestClient, db_url: str, limit: str
) -> None:
    """(The events and checkpoints lists share `parse_limit` (wire/pages.py); they look the job up first.)"""
    engine = make_engine(db_url)
    before = count_jobs(engine)
    response = client.get("/v1/fine_tuning/jobs", params={"limit": limit}, headers=ADMIN)
    assert_openai_error(response, 400, "invalid_request_error", "limit")
    assert count_jobs(engine) == before
    engine.dispose()

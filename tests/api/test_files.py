"""/v1/files route detail, in process, on both databases: bodies the fuzzer found answered with a 500 are each
a 400 envelope naming the field, with no file row and no stored bytes left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stillroom.store.db import make_engine
from stillroom.store.files import count_files
from tests.admin import ADMIN, fake_upstream, make_client
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]

BOUNDARY = "b0undary"
MULTIPART = {**ADMIN, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files-blobs")


@pytest.fixture(scope="module")
def client(
    db_url: str, fake_upstream: FakeUpstream, files_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("files"), fake_upstream, db_url, files_dir=files_dir) as c:
        yield c


@pytest.fixture
def nothing_kept(db_url: str, files_dir: Path) -> Iterator[None]:
    """The refused upload leaves the files table and the files folder as they were."""
    engine = make_engine(db_url)
    before, blobs = count_files(engine), sorted(files_dir.rglob("*"))
    yield
    assert count_files(engine) == before
    assert sorted(files_dir.rglob("*")) == blobs
    engine.dispose()


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()
PURPOSE = _part("purpose", b"batch")


@pytest.mark.usefixtures("nothing_kept")
def test_a_malformed_multipart_body_is_a_400_not_a_500(client: TestClient) -> None:
    # a control character where a part's header should be: python-multipart refuses it mid-parse
    response = client.post("/v1/files", content=f"--{BOUNDARY}\r\n\x0e".encode() + END, headers=MULTIPART)
    error = assert_openai_error(response, 400, "invalid_request_error", "file")
    assert "malformed" in error["message"]


@pytest.mark.usefixtures("nothing_kept")
def test_a_body_cut_off_inside_the_file_is_refused_not_stored_truncated(client: TestClient) -> None:
    cut = PURPOSE + _part("file", b"half of a file", "a.txt")[: -len("of a file\r\n")]
    response = client.post("/v1/files", content=cut, headers=MULTIPART)
    error = assert_openai_error(response, 400, "invalid_request_error", "file")
    assert "closing boundary" in error["message"]


@pytest.mark.usefixtures("nothing_kept")
def test_a_second_file_part_is_refused(client: TestClient) -> None:
    body = PURPOSE + _part("file", b"one", "a.txt") + _part("file", b"two", "b.txt") + END
    response = client.post("/v1/files", content=body, headers=MULTIPART)
    assert_openai_error(response, 400, "invalid_request_error", "file")


@pytest.mark.usefixtures("nothing_kept")
@pytest.mark.parametrize("seconds", ["\u00b2", "\u0663\u0666\u0660\u0660"])  # a superscript two; Arabic-Indic 3600
def test_non_ascii_digits_in_expires_after_seconds_are_a_400(client: TestClient, seconds: str) -> None:
    fields = {"expires_after[anchor]": "created_at", "expires_after[seconds]": seconds}
    body = PURPOSE + b"".join(_part(k, v.encode()) for k, v in fields.items()) + _part("file", b"x", "a.txt") + END
    response = client.post("/v1/files", content=body, headers=MULTIPART)
    assert_openai_error(response, 400, "invalid_request_error", "expires_after.seconds")


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "0", "10001"])
def test_list_files_refuses_a_limit_that_is_not_1_to_10000_in_ascii_digits(client: TestClient, limit: str) -> None:
    response = client.get("/v1/files", params={"limit": limit}, headers=ADMIN)
    assert_openai_error(response, 400, "invalid_request_error", "limit")


def test_the_published_limit_of_list_files_is_the_one_enforced(client: TestClient) -> None:
    (limit,) = [
        p for p in client.get("/openapi.json").json()["paths"]["/v1/files"]["get"]["parameters"] if p["name"] == "limit"
    ]
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 10_000)
    assert client.get("/v1/files", params={"limit": 10_000}, headers=ADMIN).status_code == 200

"""An in-process Stillroom app with the server key, and helpers to make projects and keys in it.

Its one model relays to the named fake upstream: these tests check Stillroom's own decisions (who may call,
what is stored), which do not depend on what the model answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from stillroom.app import create_app
from stillroom.config import Settings
from tests.live import FakeUpstream, LiveServer, fake_models_config, start_fake_upstream, start_server

SERVER_KEY = "sk-test-server-admin-000111"
ADMIN = {"authorization": f"Bearer {SERVER_KEY}"}


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    fake = start_fake_upstream(tmp_path_factory.mktemp("fake") / "fake.log")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def two_servers(
    db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two `stillroom serve` processes sharing one database (the session's SQLite file or PostgreSQL)."""
    tmp = tmp_path_factory.mktemp("pair")
    config = fake_models_config(fake_upstream.url, {"fake": ("fake", None)})
    servers = [start_server(tmp, db_url, config=config, api_key=SERVER_KEY, name=f"node{i}") for i in range(2)]
    yield servers[0], servers[1]
    for server in servers:
        server.stop()


def models_file(tmp: Path, fake: FakeUpstream) -> Path:
    path = tmp / "models.toml"
    path.write_text(fake_models_config(fake.url, {"fake": ("fake", None)}))
    return path


def make_client(tmp: Path, fake: FakeUpstream, db_url: str, **settings: Any) -> TestClient:
    values: dict[str, Any] = {
        "database_url": db_url,
        "config": models_file(tmp, fake),
        "api_key": SecretStr(SERVER_KEY),
    }
    return TestClient(create_app(Settings.model_validate(values | settings)))


def new_project(client: TestClient, **fields: Any) -> str:
    project_id = f"p-{uuid.uuid4().hex[:12]}"
    response = client.post(
        "/v1/organization/projects", json={"name": project_id, "id": project_id, **fields}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    return project_id


def new_key(client: TestClient, project_id: str, role: str, **fields: Any) -> str:
    response = client.post(
        f"/v1/organization/projects/{project_id}/api_keys", json={"role": role, **fields}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    key: str = response.json()["value"]
    return key


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}]}

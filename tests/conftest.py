"""Shared fixtures: both databases, real `stillroom serve` processes, the real openai SDK clients.

Every API test runs twice, on SQLite and on PostgreSQL (`db_url`). The "real upstream" is a second
Stillroom process serving the bundled SmolLM2 model; the gateway under test reaches it through its
`openai` and `azure` providers as well as serving SmolLM2 itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import openai
import psycopg
import pytest
from sqlalchemy import Engine

from stillroom.store.db import make_engine
from tests.live import LiveServer, start_server

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MODEL = "smollm2-135m-instruct"
GATEWAY_KEY = "sk-test-gateway-0123456789"
UPSTREAM_KEY = "sk-test-upstream-planted-secret-9876"
AZURE_API_VERSION = "2025-02-01-preview"
NewDatabase = Callable[[str], str]  # the new_database fixture: an empty database on the backend of a URL


def gateway_config(upstream_url: str) -> str:
    return f"""
[[models]]
name = "{LOCAL_MODEL}"
provider = "local"

[[models]]
name = "relay"
provider = "openai"
base_url = "{upstream_url}/v1"
api_key_env = "TEST_UPSTREAM_KEY"
upstream_model = "{LOCAL_MODEL}"

[[models]]
name = "relay-azure"
provider = "azure"
endpoint = "{upstream_url}"
deployment = "{LOCAL_MODEL}"
api_version = "{AZURE_API_VERSION}"
api_key_env = "TEST_UPSTREAM_KEY"

[[models]]
name = "relay-missing"
provider = "openai"
base_url = "{upstream_url}/v1"
api_key_env = "TEST_UPSTREAM_KEY"
upstream_model = "no-such-model"

[[models]]
name = "unreachable"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
"""


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"stillroom_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'stillroom.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def new_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NewDatabase]:
    """Make an empty database on the backend of a given URL (dropped at the end of the session)."""
    made: list[str] = []

    def make(like_url: str) -> str:
        if like_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path_factory.mktemp('own') / 'own.db'}"
        name = f"stillroom_own_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    yield make
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def open_db_url(db_url: str, new_database: NewDatabase) -> str:
    """A database of its own, on `db_url`'s backend, for a server without a key. Laptop mode (no sign-in) lasts
    only while no project key exists, and other modules' servers create keys in the shared database."""
    return new_database(db_url)


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A second Stillroom process: the real OpenAI-compatible upstream (bundled SmolLM2, own key)."""
    tmp = tmp_path_factory.mktemp("upstream")
    server = start_server(tmp, f"sqlite:///{tmp / 'upstream.db'}", api_key=UPSTREAM_KEY, name="upstream")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server(db_url: str, upstream: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The gateway under test, on one database backend."""
    tmp = tmp_path_factory.mktemp("gateway")
    live = start_server(
        tmp,
        db_url,
        config=gateway_config(upstream.url),
        api_key=GATEWAY_KEY,
        env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY, "STILLROOM_MAX_BODY_BYTES": str(256 * 1024)},
        name="gateway",
    )
    yield live
    live.stop()


@pytest.fixture(scope="session")
def engine(server: LiveServer) -> Iterator[Engine]:
    """The gateway's own database, for checking what was (not) stored."""
    eng = make_engine(server.database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def azure_client(server: LiveServer) -> Iterator[openai.AzureOpenAI]:
    with openai.AzureOpenAI(
        azure_endpoint=server.url, api_key=GATEWAY_KEY, api_version=AZURE_API_VERSION, max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture
def tag() -> str:
    """A metadata value unique to one test, so tests sharing a server never see each other's rows."""
    return uuid.uuid4().hex

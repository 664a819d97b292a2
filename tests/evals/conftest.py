"""An engine on each backend with the eval tables, and helpers to store completions and run evals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database
from tests.conftest import NewDatabase


@pytest.fixture(scope="session")
def eval_engine(db_url: str, new_database: NewDatabase) -> Iterator[Engine]:
    """A database of its own: the run worker claims any queued run, and other modules leave some queued."""
    engine = make_engine(new_database(db_url))
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def project() -> str:
    """A project of its own per test, so tests sharing a database never see each other's rows."""
    return "p" + uuid.uuid4().hex[:12]

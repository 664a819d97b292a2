"""Usage against quota in the group commit (store/projects.py admit_rows, settle_usage), on SQLite and
PostgreSQL: the running total equals a scan whichever way a batch is admitted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from stillroom.store.completions import get_completion, save_completions, storage_usage
from stillroom.store.db import make_engine, write_transaction
from stillroom.store.migrate import upgrade_database
from stillroom.store.projects import create_project, usage_totals
from tests.store.test_completions import record

SYSTEM = {"role": "system", "content": "You are terse."}


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade_database(eng)
    yield eng
    eng.dispose()


def new_project(engine: Engine, quota_bytes: int) -> str:
    project_id = f"p-{uuid.uuid4().hex}"
    with write_transaction(engine) as conn:
        assert create_project(conn, project_id, project_id, 1, quota_bytes) is not None
    return project_id


def used(engine: Engine, project_id: str) -> int:
    return usage_totals(engine)[project_id][0]


def scanned(engine: Engine, project_id: str) -> int:
    return storage_usage(engine).get(project_id, 0)


def turn(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_a_batch_far_from_the_quota_counts_each_new_message_once(engine: Engine) -> None:
    project = new_project(engine, 10**9)
    save_completions(engine, [record(project, [SYSTEM, turn("a")])])
    # Within one batch and across batches: SYSTEM is kept already, "b" is new twice over, "c" once.
    save_completions(
        engine,
        [record(project, [SYSTEM, turn("b")]), record(project, [SYSTEM, turn("b"), turn("c")])],
    )
    assert used(engine, project) == scanned(engine, project) > 0


def test_a_batch_near_the_quota_stores_what_fits_and_counts_the_rest_of_it_exactly(engine: Engine) -> None:
    probe = new_project(engine, 10**9)
    save_completions(engine, [record(probe, [SYSTEM, turn("x" * 50)])])
    one = scanned(engine, probe)  # what one such completion costs, its messages new
    project = new_project(engine, one * 2 + one // 2)
    save_completions(engine, [record(project, [SYSTEM, turn("first")])])
    batch = [record(project, [SYSTEM, turn(f"{i}" * 50)]) for i in range(4)]
    refused = save_completions(engine, batch)
    assert refused  # the whole batch cannot fit, so it is admitted completion by completion
    assert refused == {r.id for r in batch if get_completion(engine, project, r.id) is None}
    assert len(refused) < len(batch)  # SYSTEM is kept already: the ones that fit cost less than `one`
    assert used(engine, project) == scanned(engine, project) <= one * 2 + one // 2

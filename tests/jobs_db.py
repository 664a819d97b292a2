"""A migrated database, for the distillation, files and jobs tests."""

from __future__ import annotations

from sqlalchemy import Engine

from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database


def migrated(url: str) -> Engine:
    engine = make_engine(url)
    upgrade_database(engine)
    return engine

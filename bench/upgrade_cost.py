"""What the migrations after 0006 cost on a store that already holds completions: 0007 indexes every stored
completion for search and stamps its commit clock, 0008 fills `response_model` from the stored responses,
0009 rebuilds that column's index as a partial one. Each runs in the one transaction `stillroom serve` opens
at start (stillroom.store.migrate), so the server answers nothing until all of them are done.

    .venv/bin/python -m bench.upgrade_cost --backend both --rows 200000

The rows are bench/console_scale.py's, written at the head revision (PostgreSQL: bench/bulk_load.py), then
the schema is taken down to 0006 (`alembic downgrade`: the new columns and the index tables dropped) and
brought up again one revision at a time, each timed. Databases `upgrade_cost` (SQLite in
$STILLROOM_BENCH_DIR) and PostgreSQL `stillroom_upgrade_cost`, dropped at the end; results in
bench/results/upgrade_cost.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from bench._common import create_database, drop_database, environment, write_json
from bench.console_scale import generate
from stillroom.store.db import make_engine
from stillroom.store.migrate import _MIGRATIONS, upgrade_database

DB_NAME = {"sqlite": "upgrade_cost", "postgres": "stillroom_upgrade_cost"}
STEPS = ("0007", "0008", "0009")


def downgrade(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":  # as upgrade_database: a table copy must not cascade its drop
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        with conn.begin():
            config.attributes["connection"] = conn
            command.downgrade(config, revision)


def measure(backend: str, rows: int) -> dict[str, Any]:
    url = create_database(backend, DB_NAME[backend], fresh=True)
    engine = make_engine(url)
    try:
        upgrade_database(engine)
        print(f"[{backend}] writing {rows:,} completions", flush=True)
        generation = generate(engine, rows, 5000, seed=21, bulk=backend == "postgres")
        downgrade(engine, "0006")
        if backend == "postgres":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        steps = {}
        for revision in STEPS:
            t0 = time.perf_counter()
            upgrade_database(engine, revision)
            steps[revision] = round(time.perf_counter() - t0, 1)
            print(f"[{backend}] upgrade to {revision}: {steps[revision]} s", flush=True)
        if backend == "postgres":  # (SQLite's contentless FTS5 table cannot be counted)
            with engine.connect() as conn:
                indexed = conn.execute(text("SELECT count(*) FROM completion_search")).scalar()
            assert indexed == rows, (indexed, rows)
    finally:
        engine.dispose()
        drop_database(backend, DB_NAME[backend])
    return {"rows": rows, "generation": generation, "upgrade_s": steps, "total_s": round(sum(steps.values()), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for backend in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
        results[backend] = measure(backend, args.rows) | {"environment": environment()}
        write_json("upgrade_cost.json", results)


if __name__ == "__main__":
    main()

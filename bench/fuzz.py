"""The long schemathesis run: at least 1,000 generated cases against a live `stillroom serve`, every model of
which points at THE fake upstream, checked against the server's own /openapi.json.

    .venv/bin/python -m bench.fuzz                      # SQLite and PostgreSQL, ~1,100 cases each
    .venv/bin/python -m bench.fuzz --backend sqlite --max-examples 60

Writes bench/results/fuzz.json: per backend, the cases sent (by operation and by response status), the
failures by check, each distinct failure with a reproducing curl command, and the server's health after.
Exits 1 when any check failed or fewer than --min-cases cases were sent. The short version of this run is
tests/test_openapi_fuzz.py, which shares its schema set-up and runner (`load_fuzz_schema`, `run_fuzz`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from tests.conftest import PG_ADMIN
from tests.live import fake_models_config, start_fake_upstream, start_server
from tests.test_openapi_fuzz import ALL_CHECKS, FUZZ_KEY, FUZZ_MODELS, load_fuzz_schema, run_fuzz, seed_data

RESULTS = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'fuzz.db'}"
        return
    name = f"stillroom_fuzz_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fuzz_backend(backend: str, max_examples: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stillroom-fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        fake = start_fake_upstream(tmp / "fake_upstream.log")
        try:
            with database(backend, tmp) as url:
                server = start_server(
                    tmp, url, config=fake_models_config(fake.url, FUZZ_MODELS), api_key=FUZZ_KEY, name="fuzz"
                )
                try:
                    schema = load_fuzz_schema(server.url, FUZZ_KEY, seed_data(server.url, FUZZ_KEY, 8))
                    report = run_fuzz(schema, ALL_CHECKS, max_examples=max_examples, seed=seed)
                    alive = server.process.poll() is None
                    health = httpx.get(server.url + "/health", timeout=10).json() if alive else None
                    log = server.log()
                finally:
                    server.stop()
        finally:
            fake.stop()
    result = report.as_json()
    result["server_alive_after"] = alive
    result["health_after"] = health
    result["unhandled_errors_logged"] = log.count("unhandled error")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--max-examples", type=int, default=30, help="per operation and generation mode")
    parser.add_argument("--min-cases", type=int, default=1000, help="fail if fewer cases were sent per backend")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    args = parser.parse_args()

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "max_examples": args.max_examples,
        "seed": args.seed,
        "checks": sorted(ALL_CHECKS),
        "backends": {},
    }
    ok = True
    for backend in backends:
        print(f"fuzzing on {backend} ...", flush=True)
        result = fuzz_backend(backend, args.max_examples, args.seed)
        results["backends"][backend] = result
        print(
            f"  {result['cases']} cases in {result['seconds']} s; statuses {result['responses_by_status']}; "
            f"failures by check {result['failures_by_check'] or 'none'}; "
            f"unhandled errors logged {result['unhandled_errors_logged']}",
            flush=True,
        )
        for check, found in result["unique_failures"].items():
            for failure in found:
                print(f"    {check}: {failure['case']} (x{failure['count']})")
        ok = ok and bool(result["server_alive_after"]) and result["cases"] >= args.min_cases
        ok = ok and not result["failures_by_check"] and not result["errors"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

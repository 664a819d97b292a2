"""What the SQLite search index costs the writer: CPU per group commit with the index written inside the commit
(as before migration 0010) and after it (stillroom.store.search_tail), one completion per batch as below
saturation, plus the index steps that the deferred writer runs.

Times are the thread's CPU (`time.thread_time`), not wall time, so other work on the machine moves them less.
The completion is the overhead benchmark's request (bench/overhead.py) answered by the fake upstream's
answer (tests/fake_upstream.py).

    .venv/bin/python -m bench.index_cost [--batches 3000] [--step 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.overhead import METADATA, SYSTEM_PROMPT, USER_PROMPT
from stillroom.store import search_tail
from stillroom.store.db import make_engine, raw_write_transaction
from stillroom.store.group_commit import CompletionRecord, save_completions
from stillroom.store.migrate import upgrade_database
from stillroom.wire.ids import new_completion_id
from tests.fake_upstream import _completion


def _record(response: dict[str, Any]) -> CompletionRecord:
    return CompletionRecord(
        id=new_completion_id(),
        project_id="default",
        model="fake",
        provider="openai",
        request={"temperature": 0.2, "max_tokens": 400},
        response=response,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}],
        metadata=dict(METADATA),
        request_id="req_bench",
        stream=False,
        incomplete=False,
        latency_ms=1.0,
    )


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(len(ordered) * q))]  # noqa: E731
    return {
        "p50": round(pick(0.5), 3),
        "p99": round(pick(0.99), 3),
        "p999": round(pick(0.999), 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


def measure(deferred: bool, batches: int, step: int, work: Path) -> dict[str, Any]:
    engine = make_engine(f"sqlite:///{work / ('deferred.db' if deferred else 'inline.db')}")
    upgrade_database(engine)
    connection = engine.raw_connection()  # held, as the writer holds it
    response = orjson.loads(_completion("fake"))
    documents: dict[int, str] = {}
    commits: list[float] = []
    steps: list[float] = []
    try:
        for _ in range(batches):
            start = time.thread_time()
            save_completions(engine, [_record(response)], connection, documents=documents if deferred else None)
            commits.append((time.thread_time() - start) * 1000)
            if deferred and len(documents) >= step:
                start = time.thread_time()
                with raw_write_transaction(engine, connection) as cursor:
                    _, through = search_tail.index_pending(cursor, documents, step)
                steps.append((time.thread_time() - start) * 1000)
                for seq in [s for s in documents if s <= through]:
                    del documents[seq]
    finally:
        connection.close()
        engine.dispose()
    result: dict[str, Any] = {"commit_cpu_ms": _percentiles(commits)}
    if steps:
        result["step_cpu_ms"] = _percentiles(steps) | {"completions": step, "steps": len(steps)}
    result["cpu_ms_per_completion"] = round((sum(commits) + sum(steps)) / batches, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--step", type=int, default=128, help="completions per index step (the writer's INDEX_STEP)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stillroom-index-cost-") as tmp:
        for label, deferred in (("indexed in the commit", False), ("indexed after it", True)):
            result = measure(deferred, args.batches, args.step, Path(tmp))
            print(f"{label}: {orjson.dumps(result).decode()}")


if __name__ == "__main__":
    main()

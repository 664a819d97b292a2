"""The console's list calls on a large store: the API time of a filter change (metadata, model, time range) and
of a full-text search, through HTTP to a live `stillroom serve`, on SQLite and PostgreSQL; and the bytes of a
cold console load (Debian's chromium via Playwright, as the browser tests drive it).

    .venv/bin/python -m bench.console_scale --backend sqlite --rows 1000000
    .venv/bin/python -m bench.console_scale --backend postgres --rows 1000000 --bulk
    .venv/bin/python -m bench.console_scale --cleanup            # drop both benchmark databases

The store is bench/_common.py's Generator (the store_scale data: Zipf-distributed words, 24 system prompts,
conversations of 1-6 turns, four metadata keys, three models), written with the real `save_completions`
(so the search index and the commit clock are kept as in production), or on PostgreSQL with `--bulk` by
bench/bulk_load.py (the same rows by COPY, indexes and keys made after; a 1,000-row sample is first written
both ways and every table and API answer compared, `check_bulk_load`), with ids spread evenly over the last
90 days and 2% of them minted up to 10 minutes before their neighbours (streams committed late). Databases:
$STILLROOM_BENCH_DIR/console_scale.db and PostgreSQL `stillroom_console`; results in
bench/results/console_scale.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, text

from bench._common import (
    METADATA_KEYS,
    RESULTS,
    Generator,
    create_database,
    database_bytes,
    drop_database,
    environment,
    meta_value,
    percentile,
    print_table,
    summary_ms,
    write_json,
)
from bench.bulk_load import bulk_load
from stillroom.store.completions import CompletionRecord, save_completions
from stillroom.store.db import checkpoint_wal, make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.store.search import search_terms
from stillroom.wire.ids import _base62

DB_NAME = {"sqlite": "console_scale", "postgres": "stillroom_console"}
RESULT_FILE = "console_scale.json"
DAY = 86_400
SPAN_DAYS = 90
TARGET_MS = 100.0


def _id_at(micros: int, rng: random.Random) -> str:
    return "chatcmpl-" + _base62(micros, 9) + _base62(rng.getrandbits(119) % 62**20, 20)


def batches(rows: int, batch: int, seed: int) -> Iterator[list[CompletionRecord]]:
    """The benchmark's completions, `batch` at a time: ids spread evenly over the last SPAN_DAYS days, 2% of
    them minted up to 10 minutes before their neighbours."""
    gen = Generator(seed=seed)
    rng = random.Random(seed)
    end = int(time.time() * 1_000_000)
    start = end - SPAN_DAYS * DAY * 1_000_000
    step = (end - start) // rows
    done = 0
    while done < rows:
        records = gen.records(min(batch, rows - done))
        for n, record in enumerate(records):
            micros = start + (done + n) * step
            if rng.random() < 0.02:
                micros -= rng.randrange(600_000_000)
            record.id = _id_at(micros, rng)
            record.response["id"] = record.id
            record.response["created"] = micros // 1_000_000
        yield records
        done += len(records)


def generate(engine: Engine, rows: int, batch: int, seed: int, bulk: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    if bulk:
        bulk_load(engine, batches(rows, batch, seed))
    else:
        done = 0
        for records in batches(rows, batch, seed):
            save_completions(engine, records)
            done += len(records)
            if engine.dialect.name == "sqlite" and done % (20 * batch) == 0:
                checkpoint_wal(engine)  # what the writer does every CHECKPOINT_EVERY batches: a bounded WAL
            if done % 100_000 < batch:
                print(f"  {done:>9,} rows  {done / (time.perf_counter() - t0):>7,.0f} rows/s", flush=True)
    wall = time.perf_counter() - t0
    how = "bulk_load (COPY; indexes and keys made after)" if bulk else "save_completions"
    return {"rows": rows, "batch": batch, "wall_s": round(wall, 1), "rows_per_s": round(rows / wall), "how": how}


def vocabulary(engine: Engine, sample: int = 3000) -> dict[str, str]:
    """Words of the newest answers by how often they occur: a rare, a middling and a common one."""
    with engine.connect() as conn:
        responses = conn.execute(
            text("SELECT response FROM completions ORDER BY seq DESC LIMIT :n"), {"n": sample}
        ).scalars()
        counts: Counter[str] = Counter()
        for response in responses:
            content = orjson.loads(response)["choices"][0]["message"]["content"]
            counts.update(set(search_terms(content)))
    ranked = [w for w, _ in counts.most_common() if len(w) >= 4]
    return {"common": ranked[0], "middling": ranked[len(ranked) // 20], "rare": ranked[int(len(ranked) * 0.9)]}


def cases(now: int, words: dict[str, str], rng: random.Random) -> dict[str, tuple[str, Callable[[], dict[str, str]]]]:
    """name -> (group, fresh query parameters). Every list is the console's: newest first, 50 a page."""

    def day(days_ago: int) -> dict[str, str]:
        return {"created_after": str(now - days_ago * DAY), "created_before": str(now - (days_ago - 1) * DAY)}

    def tag() -> str:
        return meta_value("tag", rng.randrange(METADATA_KEYS["tag"]))

    def user() -> str:
        return meta_value("user", rng.randrange(METADATA_KEYS["user"]))

    return {
        "no filter": ("filter", lambda: {}),
        "model": ("filter", lambda: {"model": rng.choice(["gpt-4.1", "o4-mini"])}),
        "model gpt-4.1": ("filter", lambda: {"model": "gpt-4.1"}),
        "model o4-mini (its own name too)": ("filter", lambda: {"model": "o4-mini"}),
        "model gpt-4.1-2025-04-14 (own name)": ("filter", lambda: {"model": "gpt-4.1-2025-04-14"}),
        "metadata tag (1 in 10)": ("filter", lambda: {"metadata[tag]": tag()}),
        "metadata user (1 in 1000)": ("filter", lambda: {"metadata[user]": user()}),
        "metadata tag + user": ("filter", lambda: {"metadata[tag]": tag(), "metadata[user]": user()}),
        "last 24 h": ("filter", lambda: {"created_after": str(now - DAY)}),
        "one day, 30-80 days ago": ("filter", lambda: day(rng.randrange(30, 80))),
        "before 60 days ago": ("filter", lambda: {"created_before": str(now - 60 * DAY)}),
        "one day + model o4-mini": ("filter", lambda: {**day(rng.randrange(30, 80)), "model": "o4-mini"}),
        "one day + metadata tag": ("filter", lambda: {**day(rng.randrange(30, 80)), "metadata[tag]": tag()}),
        "search rare word": ("search", lambda: {"search": words["rare"]}),
        "search middling word": ("search", lambda: {"search": words["middling"]}),
        "search common word": ("search", lambda: {"search": words["common"]}),
        "search two words": ("search", lambda: {"search": f"{words['middling']} {words['common']}"}),
        "search prefix": ("search", lambda: {"search": words["middling"][:3] + "*"}),
        "search + metadata tag": ("search", lambda: {"search": words["middling"], "metadata[tag]": tag()}),
        "search + one day": ("search", lambda: {"search": words["middling"], **day(rng.randrange(30, 80))}),
        "search rare + user": ("search", lambda: {"search": words["rare"], "metadata[user]": user()}),
    }


SERVER_CONFIG = '[[models]]\nname = "fake"\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'


def measure_http(url: str, backend: str, reps: int, rng: random.Random, words: dict[str, str]) -> dict[str, Any]:
    from tests.live import start_server

    now = int(time.time())
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), url, config=SERVER_CONFIG, name=f"console-scale-{backend}")
        try:
            with httpx.Client(base_url=server.url + "/v1", timeout=60) as client:
                for name, (group, make) in cases(now, words, rng).items():
                    samples, sizes = [], []
                    for n in range(reps + 3):
                        params = {"limit": "50", "order": "desc", **make()}
                        t0 = time.perf_counter()
                        response = client.get("/chat/completions", params=params)
                        elapsed = time.perf_counter() - t0
                        assert response.status_code == 200, response.text
                        if n >= 3:  # the first calls warm the caches
                            samples.append(elapsed)
                            sizes.append(len(response.json()["data"]))
                    out[name] = _summary(samples) | {"group": group, "rows_p50": sorted(sizes)[len(sizes) // 2]}
                    print(
                        f"  [{backend}] {name:<28} p50 {out[name]['p50_ms']:8.1f} ms  p95 {out[name]['p95_ms']:8.1f} ms"
                    )
                out["dry run count: one day + tag"] = _count(client, now, rng)
                out["cold load"] = cold_load(server.url)
        finally:
            server.stop()
    return out


CHECK_TABLES = {
    "completions": "SELECT * FROM completions ORDER BY seq",
    "completion_metadata": "SELECT * FROM completion_metadata ORDER BY completion_id, key",
    "message_contents": "SELECT * FROM message_contents ORDER BY project_id, digest",
    "completion_search": "SELECT seq, document::text FROM completion_search ORDER BY seq",
    "completion_tombstones": "SELECT * FROM completion_tombstones ORDER BY id",
    "sequences": "SELECT * FROM sequences ORDER BY name",
    "projects": "SELECT id, quota_bytes, used_bytes, not_stored, storage_enabled FROM projects ORDER BY id",
}


def check_bulk_load(rows: int = 1000, seed: int = 99) -> dict[str, Any]:
    """Write one sample with `save_completions` (batches of 100) and with `bulk_load` (batches of 300) into two
    fresh PostgreSQL databases; every table must hold the same rows, and the HTTP list API must answer each
    benchmark case (and its second page) with the same bytes."""
    from tests.live import start_server

    (records,) = batches(rows, rows, seed)
    names = {how: f"{DB_NAME['postgres']}_check_{how}" for how in ("store", "bulk")}
    urls = {how: create_database("postgres", name, fresh=True) for how, name in names.items()}
    engines = {how: make_engine(url) for how, url in urls.items()}
    try:
        for engine in engines.values():
            upgrade_database(engine)
        for start in range(0, rows, 100):
            save_completions(engines["store"], records[start : start + 100])
        bulk_load(engines["bulk"], (records[s : s + 300] for s in range(0, rows, 300)))
        tables = {}
        for name, sql in CHECK_TABLES.items():
            dumps = {}
            for how, engine in engines.items():
                with engine.connect() as conn:
                    dumps[how] = [tuple(r) for r in conn.execute(text(sql))]
            assert dumps["store"] == dumps["bulk"], f"bulk load differs in {name}"
            tables[name] = len(dumps["store"])
        words = vocabulary(engines["store"], sample=rows)
        now = int(time.time())
        for engine in engines.values():
            engine.dispose()
        answers: dict[str, list[bytes]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for how, url in urls.items():
                server = start_server(Path(tmp), url, config=SERVER_CONFIG, name=f"check-{how}")
                try:
                    answers[how] = _answers(server.url + "/v1", now, words)
                finally:
                    server.stop()
        assert answers["store"] == answers["bulk"], "the API answers a bulk-loaded store differently"
    finally:
        for engine in engines.values():
            engine.dispose()
        for name in names.values():
            drop_database("postgres", name)
    print(f"  bulk load check: {rows} rows, tables {tables}, {len(answers['store'])} API answers identical")
    return {"rows": rows, "table_rows": tables, "api_answers": len(answers["store"]), "identical": True}


def _answers(base_url: str, now: int, words: dict[str, str]) -> list[bytes]:
    """Every benchmark case (three draws each, fixed seed) and its next page, as the API's response bytes."""
    out = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        rng = random.Random(7)
        for _name, (_group, make) in cases(now, words, rng).items():
            for _ in range(3):
                params = {"limit": "20", "order": "desc", **make()}
                first = client.get("/chat/completions", params=params)
                assert first.status_code == 200, first.text
                out.append(first.content)
                last = first.json()["last_id"]
                if last:
                    out.append(client.get("/chat/completions", params={**params, "after": last}).content)
    return out


def _count(client: httpx.Client, now: int, rng: random.Random) -> dict[str, Any]:
    """What "Select all matching" costs: the delete endpoint's dry run."""
    samples = []
    for _ in range(20):
        days = rng.randrange(30, 80)
        body = {
            "created_after": now - days * DAY,
            "created_before": now - (days - 1) * DAY,
            "metadata": {"tag": meta_value("tag", rng.randrange(10))},
            "dry_run": True,
        }
        t0 = time.perf_counter()
        response = client.post("/organization/projects/default/chat_completions/delete", json=body)
        samples.append(time.perf_counter() - t0)
        assert response.status_code == 200, response.text
    return _summary(samples) | {"group": "count"}


def _summary(samples: list[float]) -> dict[str, Any]:
    return summary_ms(samples) | {"p95_ms": round(percentile([x * 1000 for x in samples], 95), 3)}


def cold_load(url: str) -> dict[str, Any]:
    """Bytes a browser with an empty cache fetches to show the Stored completions pane (open server)."""
    from playwright.sync_api import sync_playwright

    from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

    fetched: list[tuple[str, int, str]] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("requestfinished", lambda r: fetched.append((r.url, r.sizes()["responseBodySize"], r.resource_type)))
        page.goto(url + "/#/completions", wait_until="networkidle")
        page.wait_for_selector("table.completions tbody tr[data-id]")
        page.wait_for_load_state("networkidle")
        browser.close()
    assets = [(u, n) for u, n, kind in fetched if "/v1/" not in u]
    api = [(u, n) for u, n, kind in fetched if "/v1/" in u]
    return {
        "asset_bytes": sum(n for _, n in assets),
        "assets": [[u.removeprefix(url), n] for u, n in assets],
        "api_bytes": sum(n for _, n in api),
        "api_requests": len(api),
    }


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    url = create_database(backend, DB_NAME[backend], fresh=args.fresh)
    engine = make_engine(url)
    upgrade_database(engine)
    with engine.connect() as conn:
        have = int(conn.execute(text("SELECT count(*) FROM completions")).scalar() or 0)
    result: dict[str, Any] = {"rows": max(have, args.rows)}
    if have < args.rows:
        bulk = args.bulk and backend == "postgres"
        if bulk:
            result["bulk_check"] = check_bulk_load()
        print(f"[{backend}] writing {args.rows - have:,} completions", flush=True)
        seed = 11 if backend == "sqlite" else 12
        result["generation"] = generate(engine, args.rows - have, args.batch, seed, bulk=bulk)
    else:
        previous = _previous(backend)
        result["generation"] = previous.get("generation", {"note": "generated by an earlier run"})
        if "bulk_check" in previous:
            result["bulk_check"] = previous["bulk_check"]
    if not args.measure:
        return result
    if backend == "postgres":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    with engine.connect() as conn:
        result["lag_s"] = round(
            int(conn.execute(text("SELECT lag FROM sequences WHERE name = 'completions'")).scalar() or 0) / 1e6, 1
        )
    result["database_bytes"] = database_bytes(backend, DB_NAME[backend])
    words = vocabulary(engine)
    result["words"] = words
    engine.dispose()
    result["http"] = measure_http(url, backend, args.reps, random.Random(5), words)
    return result


def _previous(backend: str) -> dict[str, Any]:
    path = RESULTS / RESULT_FILE
    results = orjson.loads(path.read_bytes()) if path.exists() else {}
    found: dict[str, Any] = results.get("backends", {}).get(backend, {})
    return found


def write_cost(backend: str, rows: int, batch: int) -> dict[str, Any]:
    """What keeping the search index costs a write: save_completions in batches of `batch` (the writer's batches
    are a few to a few hundred), with the index kept and with it switched off (documents not made, nothing
    inserted), alternating rounds on one fresh database."""
    from stillroom.store import completions as store

    name = f"{DB_NAME[backend]}_write"
    url = create_database(backend, name, fresh=True)
    engine = make_engine(url)
    upgrade_database(engine)
    gen = Generator(seed=3)
    timings: dict[str, list[float]] = {"indexed": [], "not indexed": []}
    real_index, real_document = store.search.index_rows, store.search.document_text
    try:
        for round_ in range(2 * (rows // batch // 20)):
            mode = "indexed" if round_ % 2 == 0 else "not indexed"
            if mode == "not indexed":
                store.search.index_rows = lambda *a, **k: None  # type: ignore[assignment]
                store.search.document_text = lambda *a, **k: ""  # type: ignore[assignment]
            for _ in range(10):
                records = gen.records(batch)
                t0 = time.perf_counter()
                save_completions(engine, records)
                timings[mode].append((time.perf_counter() - t0) / batch)
            store.search.index_rows, store.search.document_text = real_index, real_document
    finally:
        store.search.index_rows, store.search.document_text = real_index, real_document
        engine.dispose()
        drop_database(backend, name)
    out = {mode: round(sorted(t)[len(t) // 2] * 1e6, 1) for mode, t in timings.items()}
    return {"batch": batch, "us_per_completion_p50": out, "added_us": round(out["indexed"] - out["not indexed"], 1)}


def report(results: dict[str, Any]) -> None:
    backends = list(results["backends"])
    backends = [b for b in backends if "http" in results["backends"][b]]
    if not backends:
        return
    names = [n for n in results["backends"][backends[0]]["http"] if n != "cold load"]
    rows = []
    for name in names:
        row: list[Any] = [name]
        for backend in backends:
            s = results["backends"][backend]["http"].get(name, {})
            row += [s.get("p50_ms", "-"), s.get("p95_ms", "-")]
        rows.append(row)
    headers = ["case"] + [f"{b} {q}" for b in backends for q in ("p50 ms", "p95 ms")]
    print_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=40, help="calls per case (after 3 warm-up calls)")
    parser.add_argument("--fresh", action="store_true", help="drop and regenerate the database")
    parser.add_argument("--cleanup", action="store_true", help="drop both benchmark databases and exit")
    parser.add_argument(
        "--bulk", action="store_true", help="PostgreSQL: write by bench/bulk_load.py (COPY), checked against the store"
    )
    parser.add_argument("--no-measure", dest="measure", action="store_false", help="only write the rows")
    parser.add_argument("--write-cost", action="store_true", help="only measure what the index adds to a write")
    args = parser.parse_args(argv)
    if args.cleanup:
        for backend, name in DB_NAME.items():
            drop_database(backend, name)
        return
    path = RESULTS / RESULT_FILE
    results: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    results.setdefault("backends", {})
    if args.write_cost:
        for backend in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
            cost = write_cost(backend, 20_000, 50) | {"environment": environment()}
            results.setdefault("write_cost", {})[backend] = cost
            print(f"[{backend}] {cost['us_per_completion_p50']} µs per completion, index adds {cost['added_us']} µs")
        write_json(RESULT_FILE, results)
        return
    results["target_ms"] = TARGET_MS
    for backend in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
        result = run_backend(backend, args)
        result["environment"] = environment()
        result["command"] = "python -m bench.console_scale " + " ".join(sys.argv[1:] if argv is None else argv)
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        results["backends"][backend] = result
        write_json(RESULT_FILE, results)
    report(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

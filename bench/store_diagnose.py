"""Why the misses in store_scale/ingest happen, measured on the 1,000,000-row databases store_scale built,
with prototypes of the proposed fixes (run here only; nothing in src/ is changed).

    .venv/bin/python -m bench.store_diagnose --backend both [--part filters|writes|space|all]

filters: two-pair metadata filters. list_completions drives the query by the alphabetically first pair and
    probes the others per row, so its cost is the number of rows of the first pair it walks before finding a
    page of matches. Measured: rows walked, the current call, and a prototype that drives by the most selective
    pair (one capped count per pair first) and gives the EXISTS probes their project_id.
writes: what save_completions (the store's own group commit: sequence, quota check, inserts, commit) costs per
    completion on a large database, serialising timed apart, at 1M rows and on an empty database; SQLite with
    its default 2 MB page cache and with 256 MB. (An earlier version timed a copy of its inserts statement by
    statement, and a PostgreSQL `unnest` variant; both predate the commit sequence and were removed.)
space: what the SQLite file holds, per table and index (dbstat), against storage_usage.

Results: bench/results/store_diagnose.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

import orjson
from sqlalchemy import Engine, exists, func, literal, select, text

from bench._common import (
    METADATA_KEYS,
    PROJECT,
    Generator,
    create_database,
    drop_database,
    environment,
    meta_value,
    summary_ms,
    url_for,
    write_json,
)
from stillroom.store import completions as store
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.store.pages import COLUMNS, row_to_stored
from stillroom.store.tables import completion_metadata, completions

DB_NAME = {"sqlite": "store_scale", "postgres": "stillroom_bench"}
CAP = 1000  # as list_completions' _SELECTIVITY_PROBE


# --- filters ---------------------------------------------------------------------------------------------


def proposed_list(
    engine: Engine, project_id: str, metadata: dict[str, str], limit: int = 20, *, ids_first: bool = False
) -> list[store.StoredCompletion]:
    """list_completions (first page, asc) as proposed: the rarest pair drives (one capped count per pair first,
    as 0d79e5e does), and every EXISTS probe is also scoped to the project (the change proposed), so it can
    use ix_completion_metadata_lookup.
    `ids_first`: find the page's ids in completion_metadata alone, then read those completions."""
    cm = completion_metadata.c
    pairs = sorted(metadata.items())
    with engine.connect() as conn:
        if len(pairs) > 1:
            capped = [
                select(func.count())
                .select_from(
                    select(literal(1))
                    .where(cm.project_id == project_id, cm.key == k, cm.value == v)
                    .limit(CAP)
                    .subquery()
                )
                .scalar_subquery()
                for k, v in pairs
            ]
            counts = conn.execute(select(*capped)).one()
            pairs = [p for _, p in sorted(zip(counts, pairs, strict=True))]
        c = completions
        first = completion_metadata.alias("m0")
        k0, v0 = pairs[0]
        probes = []
        for i, (k, v) in enumerate(pairs[1:], start=1):
            m = completion_metadata.alias(f"m{i}")
            probes.append(
                exists().where(
                    m.c.project_id == project_id,
                    m.c.completion_id == first.c.completion_id,
                    m.c.key == k,
                    m.c.value == v,
                )
            )
        where = (first.c.project_id == project_id, first.c.key == k0, first.c.value == v0, *probes)
        if ids_first:
            page = select(first.c.completion_id).where(*where).order_by(first.c.completion_id).limit(limit + 1)
            stmt = select(*COLUMNS).where(c.c.project_id == project_id, c.c.id.in_(page)).order_by(c.c.id)
        else:
            stmt = (
                select(*COLUMNS)
                .join(first, first.c.completion_id == c.c.id)
                .where(c.c.project_id == project_id, *where)
                .order_by(first.c.completion_id)
                .limit(limit + 1)
            )
        rows = conn.execute(stmt).all()
    return [row_to_stored(r) for r in rows[:limit]]


def walked(engine: Engine, pairs: list[tuple[str, str]], limit: int = 20) -> dict[str, int]:
    """Rows of the alphabetically first pair that the query before 0d79e5e walked for one page (it drove by
    that pair), and how many completions match both."""
    (k0, v0), (k1, v1) = sorted(pairs)
    with engine.connect() as conn:
        matches = list(
            conn.execute(
                text(
                    "SELECT a.completion_id FROM completion_metadata a JOIN completion_metadata b "
                    "ON b.completion_id = a.completion_id AND b.key = :k1 AND b.value = :v1 "
                    "WHERE a.project_id = :p AND a.key = :k0 AND a.value = :v0 ORDER BY a.completion_id"
                ),
                {"p": PROJECT, "k0": k0, "v0": v0, "k1": k1, "v1": v1},
            ).scalars()
        )
        driving = int(
            conn.execute(
                text("SELECT count(*) FROM completion_metadata WHERE project_id = :p AND key = :k AND value = :v"),
                {"p": PROJECT, "k": k0, "v": v0},
            ).scalar()
            or 0
        )
        second = int(
            conn.execute(
                text("SELECT count(*) FROM completion_metadata WHERE project_id = :p AND key = :k AND value = :v"),
                {"p": PROJECT, "k": k1, "v": v1},
            ).scalar()
            or 0
        )
        if len(matches) > limit:
            visited = int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM completion_metadata WHERE project_id = :p AND key = :k AND value = :v "
                        "AND completion_id <= :last"
                    ),
                    {"p": PROJECT, "k": k0, "v": v0, "last": matches[limit]},
                ).scalar()
                or 0
            )
        else:
            visited = driving
    return {"matches": len(matches), "driving_rows": driving, "other_rows": second, "walked": visited}


def filters(engine: Engine, backend: str, reps: int) -> dict[str, Any]:
    rng = random.Random(5)
    out: dict[str, Any] = {}
    for k0, k1 in (("tag", "user"), ("app", "user"), ("experiment", "tag")):
        combos = [
            {k0: meta_value(k0, rng.randrange(METADATA_KEYS[k0])), k1: meta_value(k1, rng.randrange(METADATA_KEYS[k1]))}
            for _ in range(reps)
        ]

        # Each variant over the same combinations, back to back (as store_scale measures).
        def run(call: Any, combos: list[dict[str, str]] = combos) -> tuple[list[float], list[list[str]]]:
            for meta in combos:  # a full untimed pass first: every variant then meets the same warm caches
                call(meta)
            times, ids = [], []
            for meta in combos:
                t0 = time.perf_counter()
                rows = call(meta)
                times.append(time.perf_counter() - t0)
                ids.append([r.id for r in rows])
            return times, ids

        current, expected = run(
            lambda meta: store.list_completions(
                engine, PROJECT, metadata=meta, model=None, after=None, limit=20, descending=False
            )[0]
        )
        proposed, got = run(lambda meta: proposed_list(engine, PROJECT, meta))
        ids_first, got_ids_first = run(lambda meta: proposed_list(engine, PROJECT, meta, ids_first=True))
        if got != expected or got_ids_first != expected:
            raise AssertionError("a prototype returned other rows than list_completions")
        walks = [walked(engine, list(meta.items())) for meta in combos[:40]]
        name = f"{k0} + {k1}"
        out[name] = {
            "current": summary_ms(current),
            "proposed": summary_ms(proposed),
            "proposed_ids_first": summary_ms(ids_first),
            "walked_by_alphabetical_driver_median": statistics.median(w["walked"] for w in walks),
            "walked_by_alphabetical_driver_max": max(w["walked"] for w in walks),
            "matches_median": statistics.median(w["matches"] for w in walks),
            "driving_rows_median": statistics.median(w["driving_rows"] for w in walks),
            "other_rows_median": statistics.median(w["other_rows"] for w in walks),
            "samples": walks[:10],
        }
        r = out[name]
        print(
            f"[{backend}] 2 pairs {name:18s} current p50 {r['current']['p50_ms']:8.3f} ms "
            f"p99 {r['current']['p99_ms']:8.3f} | proposed p50 {r['proposed']['p50_ms']:7.3f} ms "
            f"p99 {r['proposed']['p99_ms']:7.3f} | ids first p50 {r['proposed_ids_first']['p50_ms']:7.3f} "
            f"p99 {r['proposed_ids_first']['p99_ms']:7.3f} | alphabetical driver walked "
            f"{out[name]['walked_by_alphabetical_driver_median']:,} rows "
            f"(driving {out[name]['driving_rows_median']:,}, matches {out[name]['matches_median']})",
            flush=True,
        )
    if backend == "postgres":
        out["plans"] = pg_exists_plans(engine)
        out["deep_pages_cache"] = pg_deep_pages(engine)
    return out


def pg_deep_pages(engine: Engine, n: int = 60) -> dict[str, Any]:
    """Deep pages vs first pages on PostgreSQL: both are the same index seek (EXPLAIN: ~0.01-0.06 ms); what
    differs is whether the page's heap and TOAST blocks (responses are mostly TOASTed) are already in
    shared_buffers. Timed through list_completions: first pages, a deep page on first touch, the same again."""
    rng = random.Random(3)
    with engine.connect() as conn:
        ids = list(conn.execute(text("SELECT id FROM completions ORDER BY id")).scalars())
        toast = conn.execute(
            text(
                "SELECT pg_relation_size(reltoastrelid), pg_relation_size(oid) FROM pg_class "
                "WHERE relname = 'completions'"
            )
        ).one()

    def page(after: str | None) -> float:
        t0 = time.perf_counter()
        store.list_completions(engine, PROJECT, metadata={}, model=None, after=after, limit=20, descending=False)
        return time.perf_counter() - t0

    first = [page(None) for _ in range(n)]
    cold, warm = [], []
    for _ in range(n):
        after = ids[rng.randint(len(ids) // 4, 3 * len(ids) // 4)]
        cold.append(page(after))
        warm.append(page(after))
    out: dict[str, Any] = {
        "first page": summary_ms(first),
        "deep page, first touch": summary_ms(cold),
        "deep page, same again": summary_ms(warm),
        "completions_toast_bytes": int(toast[0]),
        "completions_heap_bytes": int(toast[1]),
    }
    for name in ("first page", "deep page, first touch", "deep page, same again"):
        print(f"[postgres] {name:24s} p50 {out[name]['p50_ms']} ms  p99 {out[name]['p99_ms']} ms", flush=True)
    return out


def pg_exists_plans(engine: Engine) -> dict[str, list[str]]:
    """The current EXISTS (no project_id) vs the proposed one, tag=t3 + user=u417, as PostgreSQL runs them."""
    base = (
        "SELECT c.id FROM completions c JOIN completion_metadata m0 ON m0.completion_id = c.id "
        "WHERE c.project_id = 'default' AND m0.project_id = 'default' AND m0.key = '{k0}' AND m0.value = '{v0}' "
        "AND EXISTS (SELECT 1 FROM completion_metadata m1 WHERE {scope}m1.completion_id = c.id "
        "AND m1.key = '{k1}' AND m1.value = '{v1}') ORDER BY m0.completion_id LIMIT 21"
    )
    shapes = {
        "before 0d79e5e (tag drives: alphabetical), EXISTS without project_id": base.format(
            k0="tag", v0="t3", k1="user", v1="u417", scope=""
        ),
        "current (user drives: rarest), EXISTS without project_id": base.format(
            k0="user", v0="u417", k1="tag", v1="t3", scope=""
        ),
        "proposed (user drives, EXISTS with project_id)": base.format(
            k0="user", v0="u417", k1="tag", v1="t3", scope="m1.project_id = 'default' AND "
        ),
        "current, experiment + tag": base.format(k0="tag", v0="t3", k1="experiment", v1="e1", scope=""),
        "proposed, experiment + tag": base.format(
            k0="tag", v0="t3", k1="experiment", v1="e1", scope="m1.project_id = 'default' AND "
        ),
    }
    out = {}
    with engine.connect() as conn:
        for name, sql in shapes.items():
            out[name] = [row[0] for row in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql))]
    return out


# --- writes ----------------------------------------------------------------------------------------------


_prepare = store.serialise_completions  # the store's own serialisation, measured apart from its SQL


def timed_save(engine: Engine, records: list[store.CompletionRecord]) -> dict[str, float]:
    """The store's own group commit, timed in two parts: serialising the batch, then `save_completions`
    itself (the sequence, the quota check, the inserts and the commit; it serialises again, which the
    first part's time is subtracted for)."""
    t0 = time.perf_counter()
    content_rows, _rows, meta_rows = _prepare(records)
    t1 = time.perf_counter()
    store.save_completions(engine, records)
    t2 = time.perf_counter()
    return {
        "serialise": t1 - t0,
        "write": max(0.0, (t2 - t1) - (t1 - t0)),
        "rows": len(records),
        "content_rows": len(content_rows),
        "metadata_rows": len(meta_rows),
    }


def _clone(backend: str) -> str:
    """A copy of the 1M-row database to write into (the original stays as store_scale left it)."""
    if backend == "sqlite":
        import shutil

        from bench._common import WORK

        src = make_engine(url_for(backend, DB_NAME[backend]))
        with src.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        src.dispose()
        shutil.copyfile(WORK / f"{DB_NAME[backend]}.db", WORK / "diagnose_big.db")
        return url_for(backend, "diagnose_big")
    import psycopg

    from bench._common import PG_ADMIN

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "stillroom_bench_big" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "stillroom_bench_big" TEMPLATE "{DB_NAME[backend]}"')
    return url_for(backend, "stillroom_bench_big")


def writes(backend: str, batches: int, batch: int) -> dict[str, Any]:
    gen = Generator(seed=99)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    big = _clone(backend)
    out["clone_s"] = round(time.perf_counter() - t0, 1)
    empty_name = "diagnose_empty" if backend == "sqlite" else "stillroom_bench_diag"
    empty = create_database(backend, empty_name, fresh=True)
    configs: list[tuple[str, str, dict[str, Any]]] = [("1M rows", big, {}), ("empty", empty, {})]
    if backend == "sqlite":
        configs.append(("1M rows, cache_size 256 MB", big, {"cache": True}))
    for label, url, opts in configs:
        engine = make_engine(url)
        if opts.get("cache"):
            from sqlalchemy import event

            @event.listens_for(engine, "connect")
            def _cache(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.execute("PRAGMA cache_size=-262144")

        upgrade_database(engine)
        runs = []
        for _ in range(batches):
            records = gen.records(batch)
            runs.append(timed_save(engine, records))
        engine.dispose()
        keys = ("serialise", "write")
        total = sum(sum(r[k] for k in keys) for r in runs)
        rows = sum(r["rows"] for r in runs)
        per = {k: round(1e6 * sum(r[k] for r in runs) / rows, 1) for k in keys}
        out[label] = {
            "us_per_completion": per,
            "rows_per_s": round(rows / total),
            "content_rows_per_completion": round(sum(r["content_rows"] for r in runs) / rows, 2),
            "metadata_rows_per_completion": round(sum(r["metadata_rows"] for r in runs) / rows, 2),
        }
        print(f"[{backend}] writes {label:42s} {out[label]['rows_per_s']:>7,} rows/s  µs/completion {per}", flush=True)
    drop_database(backend, empty_name)
    drop_database(backend, "diagnose_big" if backend == "sqlite" else "stillroom_bench_big")
    return out


# --- space -----------------------------------------------------------------------------------------------


def space(backend: str) -> dict[str, Any]:
    if backend != "sqlite":
        return {}
    engine = make_engine(url_for(backend, DB_NAME[backend]))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, count(*) AS pages, sum(pgsize) AS bytes, sum(payload) AS payload, "
                "sum(unused) AS unused FROM dbstat GROUP BY name ORDER BY bytes DESC"
            )
        ).all()
        freelist = int(conn.execute(text("PRAGMA freelist_count")).scalar() or 0)
        page_size = int(conn.execute(text("PRAGMA page_size")).scalar() or 0)
    engine.dispose()
    out = {
        r.name: {"bytes": int(r.bytes), "payload": int(r.payload), "unused": int(r.unused), "pages": int(r.pages)}
        for r in rows
    }
    out["_freelist_bytes"] = {"bytes": freelist * page_size, "payload": 0, "unused": 0, "pages": freelist}
    for name, s in out.items():
        print(f"[{backend}] space {name:40s} {s['bytes'] / 2**20:9.1f} MiB  payload {s['payload'] / 2**20:9.1f} MiB")
    return out


# --- export ----------------------------------------------------------------------------------------------


def export_worker(url: str, rows: int, cached_statements: int | None, profile: bool) -> None:
    """In its own process: export `rows` rows; print RSS growth (and a profile)."""
    import cProfile
    import io
    import pstats
    import threading

    import psutil
    from sqlalchemy import create_engine, event

    from stillroom.export import iter_training_rows

    if cached_statements is None:
        engine = make_engine(url)
    else:  # make_engine's SQLite engine, with the sqlite3 module's prepared-statement cache resized
        engine = create_engine(url, connect_args={"timeout": 30, "cached_statements": cached_statements})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

    me = psutil.Process()
    rss0 = me.memory_info().rss
    profiler = cProfile.Profile() if profile else None
    peak = {"rss": rss0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], me.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    n = 0
    sink = 0
    for row in iter_training_rows(engine, PROJECT, metadata={}, model=None):
        sink += len(orjson.dumps(row))
        n += 1
        if n >= rows:
            break
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    result: dict[str, Any] = {
        "rows": n,
        "rows_per_s": round(n / elapsed),
        "rss_start_mib": round(rss0 / 2**20, 1),
        "rss_end_mib": round(me.memory_info().rss / 2**20, 1),
        "rss_peak_sampled_mib": round(peak["rss"] / 2**20, 1),
        # ru_maxrss would carry the forking parent's peak across exec, so it is not reported here
    }
    if profiler:
        text_out = io.StringIO()
        pstats.Stats(profiler, stream=text_out).sort_stats("tottime").print_stats(18)
        lines = text_out.getvalue().splitlines()
        head = next(i for i, line in enumerate(lines) if "ncalls" in line)
        result["profile_total_s"] = round(elapsed, 2)
        result["profile_tottime"] = [line for line in lines[head : head + 19] if line.strip()]
    print("RESULT " + orjson.dumps(result).decode(), flush=True)


def export_diag(backend: str, rows: int) -> dict[str, Any]:
    import subprocess

    from bench._common import ROOT

    url = url_for(backend, DB_NAME[backend])

    def run(*extra: str) -> dict[str, Any]:
        args = [sys.executable, "-m", "bench.store_diagnose", "--export-worker", url, "--rows", str(rows), *extra]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        result: dict[str, Any] = orjson.loads(line[7:])
        return result

    out = {"profile": run("--profile")}
    for line in out["profile"].get("profile_tottime", []):
        print(f"[{backend}] {line}")
    if backend == "sqlite":
        for cached in (128, 0):
            out[f"cached_statements={cached}"] = run("--cached-statements", str(cached))
            print(f"[{backend}] export {rows:,} rows, cached_statements={cached}: {out[f'cached_statements={cached}']}")
    else:
        out["default"] = run()
        print(f"[{backend}] export {rows:,} rows: {out['default']}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--part", choices=["filters", "writes", "space", "export", "all"], default="all")
    parser.add_argument("--rows", type=int, default=300_000, help="export: rows per measurement")
    parser.add_argument("--export-worker", help=argparse.SUPPRESS)
    parser.add_argument("--cached-statements", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.export_worker:
        export_worker(args.export_worker, args.rows, args.cached_statements, args.profile)
        return
    from bench._common import RESULTS

    path = RESULTS / "store_diagnose.json"
    results: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    results.setdefault("backends", {})
    results["environment"] = environment()
    results["command"] = "python -m bench.store_diagnose " + " ".join(sys.argv[1:] if argv is None else argv)
    for backend in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
        entry = results["backends"].setdefault(backend, {})
        if args.part in ("filters", "all"):
            engine = make_engine(url_for(backend, DB_NAME[backend]))
            entry["filters"] = filters(engine, backend, args.reps)
            engine.dispose()
        if args.part in ("space", "all"):
            entry["space"] = space(backend)
        if args.part in ("export", "all"):
            entry["export"] = export_diag(backend, args.rows)
        if args.part in ("writes", "all"):
            entry["writes"] = writes(backend, args.batches, args.batch)
        write_json("store_diagnose.json", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

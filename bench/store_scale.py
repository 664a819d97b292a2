"""Stored completions at scale: 1,000,000 realistic completions, then the latency of every stored-completion
operation through `stillroom.stored` (what the HTTP API calls), a few of them through HTTP too, the query
plans of the metadata filters, and storage (content addressing vs inline messages).

    .venv/bin/python -m bench.store_scale --backend both            # generate (or reuse) and measure
    .venv/bin/python -m bench.store_scale --backend sqlite --rows 100000 --fresh
    .venv/bin/python -m bench.store_scale --cleanup                  # drop both benchmark databases

The databases are kept for bench/export.py: SQLite at $STILLROOM_BENCH_DIR/store_scale.db (default
/tmp/stillroom-bench) and PostgreSQL database `stillroom_bench`. Results: bench/results/store_scale.json,
docs/img/store_scale.png and docs/img/store_generation.png.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, event, text

from bench._common import (
    IMAGES,
    METADATA_KEYS,
    PROJECT,
    RESULTS,
    Generator,
    busy_processes,
    create_database,
    database_bytes,
    drop_database,
    environment,
    meta_value,
    print_table,
    summary_ms,
    write_json,
)
from stillroom import stored
from stillroom.store.completions import save_completions, storage_usage
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database

DB_NAME = {"sqlite": "store_scale", "postgres": "stillroom_bench"}
TARGET_MS = 10.0
RESULT_FILE = "store_scale.json"


# --- generation ------------------------------------------------------------------------------------------


def row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM completions")).scalar() or 0)


def generate(engine: Engine, gen: Generator, rows: int, batch: int) -> dict[str, Any]:
    """Write `rows` completions with save_completions in batches; time generation and writing apart."""
    gen_s = save_s = 0.0
    done = 0
    checkpoints = []
    start = time.perf_counter()
    window_start, window_rows = start, 0
    while done < rows:
        n = min(batch, rows - done)
        t0 = time.perf_counter()
        records = gen.records(n)
        t1 = time.perf_counter()
        save_completions(engine, records)
        t2 = time.perf_counter()
        gen_s += t1 - t0
        save_s += t2 - t1
        done += n
        window_rows += n
        if window_rows >= 100_000 or done == rows:
            now = time.perf_counter()
            rate = window_rows / (now - window_start)
            checkpoints.append({"rows": done, "rows_per_s": round(rate), "elapsed_s": round(now - start, 1)})
            print(f"  {done:>9,} rows  {rate:>8,.0f} rows/s (this window)  {now - start:7.1f} s", flush=True)
            window_start, window_rows = now, 0
    wall = time.perf_counter() - start
    return {
        "rows": rows,
        "batch": batch,
        "wall_s": round(wall, 1),
        "rows_per_s": round(rows / wall),
        "generate_s": round(gen_s, 1),
        "save_s": round(save_s, 1),
        "save_rows_per_s": round(rows / save_s),
        "checkpoints": checkpoints,
    }


# --- scenarios -------------------------------------------------------------------------------------------


class Data:
    """Ids the scenarios draw from: all ids in order, and those of a few filters."""

    def __init__(self, engine: Engine) -> None:
        with engine.connect() as conn:
            self.ids = list(conn.execute(text("SELECT id FROM completions ORDER BY id")).scalars())
            self.tag_ids = {
                v: list(
                    conn.execute(
                        text(
                            "SELECT completion_id FROM completion_metadata WHERE project_id = :p AND key = 'tag' "
                            "AND value = :v ORDER BY completion_id"
                        ),
                        {"p": PROJECT, "v": v},
                    ).scalars()
                )
                for v in (meta_value("tag", i) for i in range(METADATA_KEYS["tag"]))
            }
            self.model_ids = list(
                conn.execute(text("SELECT id FROM completions WHERE model = 'gpt-4.1' ORDER BY id")).scalars()
            )


def _rand(key: str, rng: random.Random) -> str:
    return meta_value(key, rng.randrange(METADATA_KEYS[key]))


def list_scenarios(data: Data, rng: random.Random) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """(name, group, kwargs for list_stored_completions) — group is 'first' or 'deep'."""

    def page(**kw: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"metadata": {}, "model": None, "after": None, "limit": 20, "descending": False}
        return base | kw

    def tag_deep_start() -> dict[str, Any]:
        value = _rand("tag", rng)
        ids = data.tag_ids[value]
        return page(metadata={"tag": value}, after=ids[rng.randint(50, 500)], descending=True)

    def tag_deep_end_v() -> dict[str, Any]:
        value = _rand("tag", rng)
        ids = data.tag_ids[value]
        return page(metadata={"tag": value}, after=ids[-rng.randint(50, 500)])

    return [
        ("no filter", "first", lambda: page()),
        ("no filter, desc (newest first)", "first", lambda: page(descending=True)),
        ("no filter, limit 100", "first", lambda: page(limit=100)),
        ("1 pair: tag (10 values)", "first", lambda: page(metadata={"tag": _rand("tag", rng)})),
        ("1 pair: experiment (3 values)", "first", lambda: page(metadata={"experiment": _rand("experiment", rng)})),
        ("1 pair: user (1000 values)", "first", lambda: page(metadata={"user": _rand("user", rng)})),
        ("1 pair: tag, desc", "first", lambda: page(metadata={"tag": _rand("tag", rng)}, descending=True)),
        (
            "2 pairs: experiment + tag",
            "first",
            lambda: page(metadata={"experiment": _rand("experiment", rng), "tag": _rand("tag", rng)}),
        ),
        (
            "2 pairs: tag + user",
            "first",
            lambda: page(metadata={"tag": _rand("tag", rng), "user": _rand("user", rng)}),
        ),
        (
            "2 pairs: app + user",
            "first",
            lambda: page(metadata={"app": _rand("app", rng), "user": _rand("user", rng)}),
        ),
        ("model: gpt-4.1 (30%)", "first", lambda: page(model="gpt-4.1")),
        ("model: o4-mini (10%)", "first", lambda: page(model="o4-mini")),
        (
            "model + 1 pair: o4-mini + user",
            "first",
            lambda: page(model="o4-mini", metadata={"user": _rand("user", rng)}),
        ),
        ("deep: no filter, asc, after near end", "deep", lambda: page(after=data.ids[-rng.randint(100, 2000)])),
        (
            "deep: no filter, desc, after near start",
            "deep",
            lambda: page(after=data.ids[rng.randint(100, 2000)], descending=True),
        ),
        ("deep: tag, asc, after near end", "deep", tag_deep_end_v),
        ("deep: tag, desc, after near start", "deep", tag_deep_start),
        (
            "deep: model, asc, after near end",
            "deep",
            lambda: page(model="gpt-4.1", after=data.model_ids[-rng.randint(100, 2000)]),
        ),
        (
            "deep: no filter, asc, after in the middle",
            "deep",
            lambda: page(after=data.ids[rng.randint(len(data.ids) // 4, 3 * len(data.ids) // 4)]),
        ),
    ]


def measure(fn: Callable[[], Any], *, reps: int, budget_s: float, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < reps and (len(samples) < 30 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def measure_args(
    fn: Callable[[dict[str, Any]], Any], make: Callable[[], dict[str, Any]], *, reps: int, budget_s: float
) -> tuple[list[float], list[int]]:
    """Like measure, with fresh random arguments each call (made outside the timed part); also page sizes."""
    for _ in range(10):
        fn(make())
    samples: list[float] = []
    sizes: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < reps and (len(samples) < 30 or time.perf_counter() < deadline):
        kwargs = make()
        t0 = time.perf_counter()
        result = fn(kwargs)
        samples.append(time.perf_counter() - t0)
        sizes.append(len(result["data"]))
    return samples, sizes


# --- query plans -----------------------------------------------------------------------------------------


def capture_sql(engine: Engine, call: Callable[[], Any]) -> list[tuple[str, Any]]:
    captured: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", before)
    return captured


def explain(engine: Engine, backend: str, statement: str, parameters: Any) -> list[str]:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if backend == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            rows = cursor.fetchall()
            depth: dict[int, int] = {0: -1}
            lines = []
            for node, parent, _unused, detail in rows:
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
            return lines
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        return [row[0] for row in cursor.fetchall()]
    finally:
        raw.close()


def plans(engine: Engine, backend: str, rng: random.Random) -> dict[str, Any]:
    """The plan of each list query shape, with representative values, and the SQL it ran."""
    shapes: dict[str, dict[str, Any]] = {
        "1 pair: tag": {"metadata": {"tag": "t3"}},
        "1 pair: user": {"metadata": {"user": "u417"}},
        "2 pairs: experiment + tag": {"metadata": {"experiment": "e1", "tag": "t3"}},
        "2 pairs: tag + user": {"metadata": {"tag": "t3", "user": "u417"}},
        "2 pairs: app + user": {"metadata": {"app": "a2", "user": "u417"}},
        "model: gpt-4.1": {"model": "gpt-4.1"},
        "model + 1 pair: o4-mini + user": {"model": "o4-mini", "metadata": {"user": "u417"}},
        "no filter": {},
        "no filter, desc": {"descending": True},
    }
    out: dict[str, Any] = {}
    for name, kw in shapes.items():
        args: dict[str, Any] = {"metadata": {}, "model": None, "after": None, "limit": 20, "descending": False} | kw
        sql = capture_sql(engine, functools.partial(stored.list_stored_completions, engine, PROJECT, **args))
        statement, parameters = sql[-1]
        out[name] = {
            "sql": " ".join(statement.split()),
            "parameters": parameters if isinstance(parameters, dict) else list(parameters),
            "plan": explain(engine, backend, statement, parameters),
        }
    return out


# --- HTTP ------------------------------------------------------------------------------------------------


def http_latencies(url: str, data: Data, rng: random.Random, reps: int) -> dict[str, Any]:
    import httpx

    from tests.live import start_server

    config = '[[models]]\nname = "fake"\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), url, config=config, name="store-scale")
        try:
            results: dict[str, Any] = {}
            with httpx.Client(base_url=server.url + "/v1", timeout=30) as client:
                cases: dict[str, Callable[[], httpx.Response]] = {
                    "list: no filter": lambda: client.get("/chat/completions", params={"limit": "20"}),
                    "list: 1 pair tag": lambda: client.get(
                        "/chat/completions", params={"metadata[tag]": _rand("tag", rng)}
                    ),
                    "list: model gpt-4.1": lambda: client.get("/chat/completions", params={"model": "gpt-4.1"}),
                    "retrieve": lambda: client.get(f"/chat/completions/{rng.choice(data.ids)}"),
                    "messages": lambda: client.get(f"/chat/completions/{rng.choice(data.ids)}/messages"),
                }
                for name, call in cases.items():
                    response = call()
                    assert response.status_code == 200, response.text
                    samples = measure(call, reps=reps, budget_s=30)
                    results[name] = summary_ms(samples) | {"response_bytes": len(response.content)}
            return results
        finally:
            server.stop()


# --- the run ---------------------------------------------------------------------------------------------


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    name = DB_NAME[backend]
    url = create_database(backend, name, fresh=args.fresh)
    engine = make_engine(url)
    upgrade_database(engine)
    result: dict[str, Any] = {"database_url": url}
    previous = _previous(backend)
    have = row_count(engine)
    gen = Generator(seed=7 if backend == "sqlite" else 8)
    if have < args.rows:
        if have:
            print(f"[{backend}] {have:,} rows present; adding {args.rows - have:,}")
        print(f"[{backend}] generating {args.rows - have:,} completions in batches of {args.batch}", flush=True)
        result["generation"] = generate(engine, gen, args.rows - have, args.batch)
        result["generation"]["naive_bytes"] = gen.naive_bytes
        result["generation"]["rows_before"] = have
    else:
        print(f"[{backend}] reusing {have:,} rows")
        result["generation"] = (previous or {}).get("generation", {"note": "reused; generated by an earlier run"})
    if backend == "postgres":
        with engine.connect() as conn:
            stats = conn.execute(
                text(
                    "SELECT relname, last_autovacuum, last_autoanalyze, n_live_tup FROM pg_stat_user_tables "
                    "ORDER BY relname"
                )
            ).all()
        result["autovacuum_before_analyze"] = [[str(c) for c in row] for row in stats]
        t0 = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        result["vacuum_analyze_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{backend}] VACUUM ANALYZE took {result['vacuum_analyze_s']} s")
    else:
        with engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            result["sqlite_stat1_present"] = bool(
                conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")).scalar()
            )

    # Storage: what is kept vs what inline messages would take, and the files on disk.
    t0 = time.perf_counter()
    usage = storage_usage(engine)
    usage_s = time.perf_counter() - t0
    naive = result["generation"].get("naive_bytes")
    rows_total = row_count(engine)
    with engine.connect() as conn:
        counts = {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0)
            for t in ("completions", "completion_metadata", "message_contents")
        }
    result["storage"] = {
        "rows": counts,
        "storage_usage_bytes": usage.get(PROJECT, 0),
        "storage_usage_call_s": round(usage_s, 2),
        "naive_bytes": naive,
        "ratio_naive_to_kept": round(naive / usage[PROJECT], 2) if naive and rows_total == args.rows else None,
        "database_bytes": database_bytes(backend, name),
    }
    print(f"[{backend}] storage: {result['storage']}")

    rng = random.Random(11)
    data = Data(engine)
    result["selectivity"] = selectivity(engine)
    result["busy_before"] = busy_processes()
    result["plans"] = plans(engine, backend, rng)

    # Latency of each operation through the domain functions.
    ops: dict[str, Any] = {}
    for label, group, make in list_scenarios(data, rng):
        samples, sizes = measure_args(
            lambda kw: stored.list_stored_completions(engine, PROJECT, **kw), make, reps=args.reps, budget_s=40
        )
        ops[label] = summary_ms(samples) | {"group": group, "page_rows_mean": round(sum(sizes) / len(sizes), 1)}
        _line(backend, label, ops[label])

    def one(label: str, call: Callable[[str], Any], ids: Callable[[], str]) -> None:
        for _ in range(10):
            call(ids())
        samples = []
        for _ in range(args.reps):
            cid = ids()
            t0 = time.perf_counter()
            call(cid)
            samples.append(time.perf_counter() - t0)
        ops[label] = summary_ms(samples) | {"group": "item"}
        _line(backend, label, ops[label])

    one("retrieve", lambda cid: stored.get_stored_completion(engine, PROJECT, cid), lambda: rng.choice(data.ids))
    one(
        "messages",
        lambda cid: stored.list_stored_messages(engine, PROJECT, cid, after=None, limit=20, descending=False),
        lambda: rng.choice(data.ids),
    )
    one(
        "update (merge 1 pair)",
        lambda cid: stored.update_stored_completion(engine, PROJECT, cid, {"metadata": {"reviewed": "yes"}}),
        lambda: rng.choice(data.ids),
    )
    doomed = iter(rng.sample(data.ids, args.reps + 20))
    one("delete", lambda cid: stored.delete_stored_completion(engine, PROJECT, cid), lambda: next(doomed))
    result["operations"] = ops
    result["busy_after"] = busy_processes()

    # Top up what delete removed, so the export benchmark sees exactly --rows completions.
    missing = args.rows - row_count(engine)
    if missing > 0:
        save_completions(engine, gen.records(missing))
        result["topped_up_after_delete"] = missing

    if args.http:
        print(f"[{backend}] HTTP", flush=True)
        result["http"] = http_latencies(url, data, rng, args.reps)
        for label, s in result["http"].items():
            print(f"[{backend}] HTTP {label:40s} p50 {s['p50_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms")
    engine.dispose()
    return result


def _line(backend: str, label: str, s: dict[str, Any]) -> None:
    print(f"[{backend}] {label:45s} p50 {s['p50_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms", flush=True)


def selectivity(engine: Engine) -> dict[str, Any]:
    """How many completions the filters used match (representative values)."""
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        out["total"] = int(conn.execute(text("SELECT count(*) FROM completions")).scalar() or 0)
        for key in METADATA_KEYS:
            rows = conn.execute(
                text("SELECT value, count(*) FROM completion_metadata WHERE key = :k GROUP BY value"), {"k": key}
            ).all()
            counts = sorted(int(n) for _, n in rows)
            out[f"metadata {key}"] = {"values": len(counts), "min": counts[0], "max": counts[-1]}
        out["models"] = dict(
            (m, int(n)) for m, n in conn.execute(text("SELECT model, count(*) FROM completions GROUP BY model")).all()
        )
        for k0, k1 in (("experiment", "tag"), ("tag", "user"), ("app", "user")):
            pair_counts = conn.execute(
                text(
                    "SELECT count(*) FROM completion_metadata a JOIN completion_metadata b "
                    "ON a.completion_id = b.completion_id AND b.key = :k1 "
                    "WHERE a.key = :k0 GROUP BY a.value, b.value"
                ),
                {"k0": k0, "k1": k1},
            ).scalars()
            counts = sorted(int(n) for n in pair_counts)
            combos = METADATA_KEYS[k0] * METADATA_KEYS[k1]
            out[f"2 pairs {k0} + {k1}"] = {
                "combinations": combos,
                "with_matches": len(counts),
                "median_matches": counts[len(counts) // 2] if counts else 0,
            }
    return out


def _previous(backend: str) -> dict[str, Any] | None:
    path = RESULTS / RESULT_FILE
    if not path.exists():
        return None
    result: dict[str, Any] | None = orjson.loads(path.read_bytes()).get("backends", {}).get(backend)
    return result


def plot(results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in ("sqlite", "postgres") if b in results["backends"]]
    if not backends:
        return []
    labels = list(results["backends"][backends[0]]["operations"])
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(labels) + 1.6))
    height = 0.8 / len(backends)
    colours = {"sqlite": "#4C72B0", "postgres": "#DD8452"}
    for i, backend in enumerate(backends):
        ops = results["backends"][backend]["operations"]
        ys = [n + i * height for n in range(len(labels))]
        p50 = [ops.get(label, {}).get("p50_ms", 0) for label in labels]
        p99 = [ops.get(label, {}).get("p99_ms", 0) for label in labels]
        ax.barh(ys, p50, height=height, color=colours[backend], label=f"{backend} p50")
        ax.scatter(p99, ys, marker="|", s=120, color="black", zorder=3, label="p99" if i == 0 else None)
    ax.axvline(TARGET_MS, color="red", linestyle="--", linewidth=1, label="10 ms target (first pages, p50)")
    ax.set_yticks([n + height * (len(backends) - 1) / 2 for n in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency through stillroom.stored (ms, log scale)")
    rows = results["backends"][backends[0]]["storage"]["rows"]["completions"]
    ax.set_title(f"Stored-completion operations at {rows:,} completions")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    out = [IMAGES / "store_scale.png"]
    fig.savefig(out[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for backend in backends:
        gen = results["backends"][backend].get("generation", {})
        points = gen.get("checkpoints") or []
        if points:
            offset = gen.get("rows_before", 0)
            ax.plot(
                [p["rows"] + offset for p in points],
                [p["rows_per_s"] for p in points],
                marker="o",
                color=colours[backend],
                label=f"{backend} (batches of {gen.get('batch')})",
            )
    ax.set_xlabel("completions stored")
    ax.set_ylabel("completions written per second (window of 100k)")
    ax.set_title("Loading with save_completions (generation included)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.append(IMAGES / "store_generation.png")
    fig.savefig(out[1], dpi=110)
    plt.close(fig)
    return out


def report(results: dict[str, Any]) -> None:
    backends = [b for b in ("sqlite", "postgres") if b in results["backends"]]
    labels: list[str] = []
    for b in backends:
        for label in results["backends"][b]["operations"]:
            if label not in labels:
                labels.append(label)
    rows = []
    for label in labels:
        row: list[Any] = [label]
        for b in backends:
            s = results["backends"][b]["operations"].get(label)
            row += [s["p50_ms"], s["p99_ms"]] if s else ["-", "-"]
        rows.append(row)
    print()
    print_table(["operation (ms)"] + [f"{b} {p}" for b in backends for p in ("p50", "p99")], rows)
    print()
    for b in backends:
        r = results["backends"][b]
        for verdict in r.get("verdicts", []):
            print(f"[{b}] {verdict}")


def verdicts(result: dict[str, Any]) -> list[str]:
    ops = result["operations"]
    out = []
    first = {k: v for k, v in ops.items() if v["group"] == "first"}
    worst = max(first.items(), key=lambda kv: kv[1]["p50_ms"])
    failing = [k for k, v in first.items() if v["p50_ms"] >= TARGET_MS]
    out.append(
        f"first pages p50 < {TARGET_MS:g} ms: {'PASS' if not failing else 'FAIL'} "
        f"(worst: {worst[0]} {worst[1]['p50_ms']} ms{'; failing: ' + ', '.join(failing) if failing else ''})"
    )
    base = {
        "deep: no filter, asc, after near end": "no filter",
        "deep: no filter, desc, after near start": "no filter, desc (newest first)",
        "deep: tag, asc, after near end": "1 pair: tag (10 values)",
        "deep: tag, desc, after near start": "1 pair: tag, desc",
        "deep: model, asc, after near end": "model: gpt-4.1 (30%)",
        "deep: no filter, asc, after in the middle": "no filter",
    }
    slow = []
    for deep, ref in base.items():
        # "no slower": within 20% or 0.2 ms of the matching first page (noise on a shared machine)
        if deep in ops and ref in ops and ops[deep]["p50_ms"] > max(ops[ref]["p50_ms"] * 1.2, ops[ref]["p50_ms"] + 0.2):
            slow.append(f"{deep} {ops[deep]['p50_ms']} ms vs {ref} {ops[ref]['p50_ms']} ms")
    detail = f" ({'; '.join(slow)})" if slow else ""
    out.append(f"deep pages no slower than first pages: {'PASS' if not slow else 'FAIL'}{detail}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000, help="completions per save_completions call")
    parser.add_argument("--reps", type=int, default=400, help="repetitions per operation")
    parser.add_argument("--fresh", action="store_true", help="drop and regenerate the database")
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip the live-server measurements")
    parser.add_argument("--cleanup", action="store_true", help="drop both benchmark databases and exit")
    args = parser.parse_args(argv)
    if args.cleanup:
        for backend, name in DB_NAME.items():
            drop_database(backend, name)
        print("dropped the store_scale databases")
        return
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    path = RESULTS / RESULT_FILE
    results: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    results.setdefault("backends", {})
    results["environment"] = environment()
    results["command"] = "python -m bench.store_scale " + " ".join(sys.argv[1:] if argv is None else argv)
    results["target_ms"] = TARGET_MS
    for backend in backends:
        result = run_backend(backend, args)
        result["verdicts"] = verdicts(result)
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        results["backends"][backend] = result
        write_json(RESULT_FILE, results)
    for image in plot(results):
        print(f"wrote {image}")
    report(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

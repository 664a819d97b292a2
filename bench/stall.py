"""Stream stalls: the worst gap between the chunks of a live stream while other clients list and write.

A stored stream from the fake upstream's `drip` model (tests/fake_upstream.py: 200 chunks, one every 10 ms)
is timed chunk by chunk at the client, first alone, then while 40 clients list stored completions
(`limit=100`) and others update metadata and store non-streamed completions. A chunk waits only if
Stillroom's event loop is busy with something else: database work on the loop (the group commit, a
`BEGIN IMMEDIATE` waiting behind an update's write lock) shows up as gaps far above 10 ms.

    .venv/bin/python -m bench.stall                     # SQLite; --backend postgres, --src for other code
    .venv/bin/python -m bench.stall --src /tmp/old/src  # the same run against another checkout's src/

Stillroom runs on core 0; the stream timer on core 1, the load (a child process) on core 1 too. Writes
bench/results/stall[-<label>].json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import PG_ADMIN, RESULTS, environment
from bench.overhead import CLIENT_CPU, GATEWAY_CPU, PY, _autogroup_nice, can_pin, free_port, prioritise, start

LISTERS = 40
UPDATERS = 4
CREATORS = 4
PROMPT = [{"role": "user", "content": "Write a long answer, please."}]


# --- the load (a child process) ----------------------------------------------------------------------


def _hold_lock(path: str, hold_ms: float, deadline: float, counts: dict[str, int]) -> None:
    """Another process writing the same SQLite file: hold its write lock `hold_ms` out of every 4 x `hold_ms`."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    while time.monotonic() < deadline:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(hold_ms / 1000)
        conn.execute("ROLLBACK")
        counts["lock_holds"] += 1
        time.sleep(3 * hold_ms / 1000)
    conn.close()


async def _load(base: str, ids: list[str], seconds: float, lock: tuple[str, float] | None) -> dict[str, int]:
    counts = {"list": 0, "update": 0, "create": 0, "errors": 0, "lock_holds": 0}
    deadline = time.monotonic() + seconds
    if lock is not None:
        threading.Thread(target=_hold_lock, args=(*lock, deadline, counts), daemon=True).start()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base, connector=connector) as http:

        async def lister() -> None:
            while time.monotonic() < deadline:
                async with http.get("/v1/chat/completions", params={"limit": "100", "order": "desc"}) as r:
                    await r.read()
                    counts["list" if r.status == 200 else "errors"] += 1

        async def updater(n: int) -> None:
            i = n
            while time.monotonic() < deadline:
                target = ids[i % len(ids)]
                body = {"metadata": {"bench": "stall", "n": str(i)}}
                async with http.post(f"/v1/chat/completions/{target}", json=body) as r:
                    await r.read()
                    counts["update" if r.status == 200 else "errors"] += 1
                i += UPDATERS

        async def creator() -> None:
            while time.monotonic() < deadline:
                body = {"model": "fake", "messages": PROMPT, "store": True, "metadata": {"bench": "stall"}}
                async with http.post("/v1/chat/completions", json=body) as r:
                    await r.read()
                    counts["create" if r.status == 200 else "errors"] += 1

        tasks = [lister() for _ in range(LISTERS)]
        tasks += [updater(n) for n in range(UPDATERS)] + [creator() for _ in range(CREATORS)]
        await asyncio.gather(*tasks)
    return counts


# --- the timed stream ----------------------------------------------------------------------------------


async def _time_stream(base: str) -> dict[str, float]:
    """One stored `drip` stream: gaps between consecutive `data:` lines as they arrive, in ms."""
    body = {"model": "drip", "messages": PROMPT, "stream": True, "store": True, "metadata": {"bench": "stream"}}
    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession(base) as http,
        http.post("/v1/chat/completions", json=body) as r,
    ):
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: "):
                arrivals.append(time.perf_counter())
    gaps = sorted((b - a) * 1000 for a, b in itertools.pairwise(arrivals))
    return {
        "chunks": len(arrivals),
        "max_gap_ms": round(gaps[-1], 2),
        "p99_gap_ms": round(gaps[int(0.99 * (len(gaps) - 1))], 2),
        "median_gap_ms": round(statistics.median(gaps), 2),
    }


async def _populate(base: str, n: int) -> list[str]:
    async with aiohttp.ClientSession(base) as http:

        async def one(i: int) -> str:
            body = {"model": "fake", "messages": [{"role": "user", "content": f"q{i}"}], "store": True}
            async with http.post("/v1/chat/completions", json=body) as r:
                return str((await r.json())["id"])

        ids: list[str] = []
        for start_at in range(0, n, 50):
            ids += await asyncio.gather(*(one(i) for i in range(start_at, min(n, start_at + 50))))
        return ids


def _streams(base: str, count: int) -> list[dict[str, float]]:
    return [asyncio.run(_time_stream(base)) for _ in range(count)]


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "streams": len(runs),
        "worst_gap_ms": max(r["max_gap_ms"] for r in runs),
        "median_of_max_gap_ms": round(statistics.median(r["max_gap_ms"] for r in runs), 2),
        "p99_gap_ms": round(statistics.median(r["p99_gap_ms"] for r in runs), 2),
        "median_gap_ms": round(statistics.median(r["median_gap_ms"] for r in runs), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--streams", type=int, default=8, help="timed streams per phase")
    parser.add_argument("--rows", type=int, default=2000, help="completions stored before timing")
    parser.add_argument("--src", type=Path, help="run Stillroom from this src/ (e.g. an older checkout)")
    parser.add_argument("--label", default="", help="suffix of the results file")
    parser.add_argument("--nice", type=int, default=-20 if os.geteuid() == 0 else 0)
    parser.add_argument(
        "--lock-ms",
        type=float,
        default=0.0,
        help="SQLite: meanwhile another process holds the write lock this long, a quarter of the time",
    )
    parser.add_argument("--load", nargs=4, metavar=("BASE", "IDS_FILE", "SECONDS", "LOCK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:  # the child process that makes the load
        base, ids_file, seconds, lock = args.load
        path, _, hold_ms = lock.rpartition("@")
        held = (path, float(hold_ms)) if path else None
        print(json.dumps(asyncio.run(_load(base, json.loads(Path(ids_file).read_text()), float(seconds), held))))
        return

    own_group_nice = _autogroup_nice()
    if args.nice:
        prioritise(os.getpid(), args.nice)
    if can_pin():
        os.sched_setaffinity(0, {CLIENT_CPU})
    gw, cl = (GATEWAY_CPU, CLIENT_CPU) if can_pin() else (None, None)
    work = Path(tempfile.mkdtemp(prefix="stillroom-stall-"))
    up_port, sr_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{up_port}/v1"
    (work / "s.toml").write_text(
        "".join(f'[[models]]\nname = "{m}"\nprovider = "openai"\nbase_url = "{base_url}"\n' for m in ("fake", "drip"))
    )
    if args.backend == "sqlite":
        db_url = f"sqlite:///{work}/s.db"
    else:
        import psycopg

        name = f"stillroom_stall_{os.getpid()}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    env = {"PYTHONPATH": str(args.src)} if args.src else {}
    serve = [str(PY), "-m", "stillroom", "serve", "--port", str(sr_port), "--config", str(work / "s.toml")]
    servers = []
    base = f"http://127.0.0.1:{sr_port}"
    try:
        up = start(
            "upstream",
            [str(PY), "-m", "tests.fake_upstream", "--port", str(up_port)],
            port=up_port,
            cpu=cl,
            workdir=work,
            env={},
        )
        servers.append(up)
        sr = start("stillroom", [*serve, "--database-url", db_url], port=sr_port, cpu=gw, workdir=work, env=env)
        servers.append(sr)
        deadline = time.monotonic() + 60
        while True:
            try:
                ids = asyncio.run(_populate(base, args.rows))
                break
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline or sr.process.poll() is not None:
                    raise RuntimeError(sr.tail()) from None
                time.sleep(0.5)
        (work / "ids.json").write_text(json.dumps(ids))
        lock = f"{work}/s.db@{args.lock_ms}" if args.lock_ms and args.backend == "sqlite" else "-"
        _streams(base, 2)  # warm-up
        alone = _streams(base, args.streams)
        load_seconds = args.streams * 2.6 + 10
        load = subprocess.Popen(
            [str(PY), "-m", "bench.stall", "--load", base, str(work / "ids.json"), str(load_seconds), lock],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            preexec_fn=lambda: os.nice(10),  # behind the stream timer on their shared core: time Stillroom, not us
        )
        time.sleep(3)  # the load is running at full tilt before the first timed stream
        loaded = _streams(base, args.streams)
        out, _ = load.communicate(timeout=load_seconds + 60)
        counts = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        for s in reversed(servers):
            s.stop()
        if args.nice and own_group_nice is not None:
            prioritise(os.getpid(), own_group_nice)
    result: dict[str, Any] = {
        "backend": args.backend,
        "src": str(args.src) if args.src else "this checkout",
        "rows": args.rows,
        "load": {
            "listers": LISTERS,
            "updaters": UPDATERS,
            "creators": CREATORS,
            "lock_ms": args.lock_ms,
            "requests": counts,
        },
        "alone": _summary(alone),
        "loaded": _summary(loaded),
        "runs": {"alone": alone, "loaded": loaded},
        "environment": environment(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"stall{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'phase':8} {'worst gap':>10} {'median max':>11} {'p99 gap':>8} {'median':>7}  (ms; drip every 10 ms)")
    for phase in ("alone", "loaded"):
        s = result[phase]
        print(
            f"{phase:8} {s['worst_gap_ms']:>10} {s['median_of_max_gap_ms']:>11} {s['p99_gap_ms']:>8} "
            f"{s['median_gap_ms']:>7}"
        )
    print(f"load requests: {counts}; wrote {path}")
    if args.backend == "postgres":
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    sys.exit(0)


if __name__ == "__main__":
    main()

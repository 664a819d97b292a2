"""Stored completions per second: (a) through the HTTP API of a live `stillroom serve` whose model is the fake
upstream (tests/fake_upstream.py), with `store: true`, at rising client concurrency up to saturation; and
(b) through the storage layer alone: the CommitQueue (group commit) with concurrent asyncio submitters, as the
gateway uses it, and save_completions at batch sizes 1/10/100/500. Both backends, fresh databases.

    .venv/bin/python -m bench.ingest --backend both
    .venv/bin/python -m bench.ingest --backend sqlite --part http --duration 5

Results: bench/results/ingest.json, docs/img/ingest_http.png, docs/img/ingest_storage.png.
The client is a lean asyncio + aiohttp loop (uvloop) in this process: on a small machine it shares the CPUs
with the server and the fake upstream, so each run records the CPU seconds of all three.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench._common import (
    IMAGES,
    RESULTS,
    Generator,
    busy_processes,
    create_database,
    drop_database,
    environment,
    percentile,
    print_table,
    write_json,
)
from stillroom.store.completions import CompletionRecord, save_completions
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.store.writer import CommitQueue

DB_NAME = {"sqlite": "ingest", "postgres": "stillroom_bench_ingest"}
RESULT_FILE = "ingest.json"


# --- (a) HTTP --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


async def _load(url: str, bodies: list[bytes], concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    """`concurrency` clients, each posting back to back; counts what completes inside the window."""
    import aiohttp

    latencies: list[float] = []
    stored_true = errors = 0
    counter = itertools.count()
    window_start = time.perf_counter() + warmup
    window_end = window_start + duration
    done = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal stored_true, errors, done
        while True:
            body = bodies[next(counter) % len(bodies)]
            t0 = time.perf_counter()
            if t0 >= window_end:
                return
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                await response.read()
                ok = response.status == 200
                flag = response.headers.get("x-stillroom-stored")
            t1 = time.perf_counter()
            if t0 >= window_start and t1 <= window_end:
                done += 1
                latencies.append(t1 - t0)
                if not ok:
                    errors += 1
                elif flag == "true":
                    stored_true += 1

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    ms = sorted(x * 1000 for x in latencies)
    return {
        "concurrency": concurrency,
        "requests": done,
        "requests_per_s": round(done / duration, 1),
        "stored_per_s": round(stored_true / duration, 1),
        "errors": errors,
        "p50_ms": round(percentile(ms, 50), 2) if ms else None,
        "p99_ms": round(percentile(ms, 99), 2) if ms else None,
    }


def _cpu(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        times = proc.cpu_times()
        out[name] = times.user + times.system
    total = 0.0  # the PostgreSQL server's processes (its backends compete for the same CPUs)
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    out["postgres"] = total
    others = 0.0  # everything else on the machine (other people's work on a shared box)
    with contextlib.suppress(Exception):
        cpu = psutil.cpu_times()
        others = cpu.user + cpu.system + cpu.nice
    out["machine"] = others
    return out


def http_part(backend: str, args: argparse.Namespace, gen: Generator) -> dict[str, Any]:
    import httpx

    from tests.live import start_server

    url = create_database(backend, DB_NAME[backend], fresh=True)
    bodies = [
        orjson.dumps({"model": "fake", "messages": messages, "store": True, "metadata": metadata})
        for messages, metadata in gen.request_bodies(2000)
    ]
    plain = [orjson.dumps({k: v for k, v in orjson.loads(b).items() if k not in ("store", "metadata")}) for b in bodies]
    port = _free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result: dict[str, Any] = {
        "request_body_bytes_mean": round(sum(map(len, bodies)) / len(bodies)),
        "runs": [],
    }
    try:
        _wait_port(port)
        config = f'[[models]]\nname = "fake"\nprovider = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        with tempfile.TemporaryDirectory() as tmp:
            server = start_server(Path(tmp), url, config=config, name=f"ingest-{backend}")
            try:
                procs = {
                    "server": psutil.Process(server.process.pid),
                    "upstream": psutil.Process(upstream.pid),
                    "client": psutil.Process(os.getpid()),
                }
                endpoint = server.url + "/v1/chat/completions"
                health_url = server.url + "/health"
                plan = [(c, True) for c in args.concurrency] + [(args.baseline_concurrency, False)]
                for concurrency, store in plan:
                    before = httpx.get(health_url).json()["store"]
                    cpu0, t0 = _cpu(procs), time.perf_counter()
                    run = asyncio.run(
                        _load(endpoint, bodies if store else plain, concurrency, args.warmup, args.duration)
                    )
                    elapsed = time.perf_counter() - t0
                    cpu1 = _cpu(procs)
                    time.sleep(0.5)
                    after = httpx.get(health_url).json()["store"]
                    run["store"] = store
                    run["cpu_percent"] = {k: round(100 * (cpu1[k] - cpu0[k]) / elapsed) for k in cpu0}
                    run["cpu_percent"]["other"] = run["cpu_percent"]["machine"] - sum(
                        v for k, v in run["cpu_percent"].items() if k != "machine"
                    )
                    committed = after["committed"] - before["committed"]
                    batches = after["batches"] - before["batches"]
                    run["commits"] = committed
                    run["group_commit_mean_batch"] = round(committed / batches, 1) if batches else None
                    run["store_failed"] = after["failed"] - before["failed"]
                    result["runs"].append(run)
                    print(
                        f"[{backend}] HTTP c={concurrency:<4} store={store!s:5}  {run['requests_per_s']:8,.0f} req/s"
                        f"  stored {run['stored_per_s']:8,.0f}/s  p50 {run['p50_ms']} ms  p99 {run['p99_ms']} ms"
                        f"  batch {run['group_commit_mean_batch']}  cpu {run['cpu_percent']}",
                        flush=True,
                    )
            finally:
                server.stop()
    finally:
        upstream.terminate()
        upstream.wait(10)
    engine = make_engine(url)
    with engine.connect() as conn:
        from sqlalchemy import text

        result["rows_stored_total"] = int(conn.execute(text("SELECT count(*) FROM completions")).scalar() or 0)
    engine.dispose()
    stored_runs = [r for r in result["runs"] if r["store"]]
    best = max(stored_runs, key=lambda r: r["stored_per_s"])
    result["saturation"] = {"concurrency": best["concurrency"], "stored_per_s": best["stored_per_s"]}
    return result


# --- (b) storage layer -----------------------------------------------------------------------------------


def _fresh_records(gen: Generator, n: int) -> list[CompletionRecord]:
    return gen.records(n)


async def _commit_queue_closed(
    queue: CommitQueue, records: list[CompletionRecord], submitters: int, duration: float
) -> tuple[int, float, list[float]]:
    """`submitters` coroutines, each handing over one record and awaiting its commit, as the gateway does."""
    it = iter(records)
    deadline = time.perf_counter() + duration
    done = 0
    waits: list[float] = []

    async def submitter() -> None:
        nonlocal done
        for record in it:
            if time.perf_counter() >= deadline:
                return
            t0 = time.perf_counter()
            await _commit(queue, record)
            waits.append(time.perf_counter() - t0)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(submitters)))
    return done, time.perf_counter() - start, waits


async def _commit(queue: CommitQueue, record: CompletionRecord) -> None:
    """The gateway's wait: `commit()` where the CommitQueue has it (a writer thread on both databases since issue 6;
    before it, inline on the loop for SQLite), else the thread-only API of earlier versions."""
    if hasattr(queue, "commit"):
        await queue.commit(record, 60.0)
    else:
        await asyncio.wrap_future(queue.submit(record))


async def _burst(queue: CommitQueue, records: list[CompletionRecord]) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(_commit(queue, r) for r in records))
    return time.perf_counter() - t0


def storage_part(backend: str, args: argparse.Namespace, gen: Generator) -> dict[str, Any]:
    url = create_database(backend, DB_NAME[backend], fresh=True)
    engine = make_engine(url)
    upgrade_database(engine)
    result: dict[str, Any] = {"commit_queue": [], "save_completions": []}
    # Warm the tables a little so the first configuration does not pay for empty-tree effects.
    save_completions(engine, _fresh_records(gen, 2000))

    for submitters in args.submitters:
        records = _fresh_records(gen, args.pool)
        queue = CommitQueue(engine, batch_size=512)
        done, elapsed, waits = asyncio.run(_commit_queue_closed(queue, records, submitters, args.duration))
        queue.close()
        ms = sorted(w * 1000 for w in waits)
        run = {
            "submitters": submitters,
            "committed": done,
            "per_s": round(done / elapsed),
            "batches": queue.batches,
            "mean_batch": round(queue.committed / queue.batches, 1) if queue.batches else None,
            "wait_p50_ms": round(percentile(ms, 50), 2),
            "wait_p99_ms": round(percentile(ms, 99), 2),
        }
        result["commit_queue"].append(run)
        print(
            f"[{backend}] CommitQueue {submitters:>5} submitters  {run['per_s']:>8,}/s  mean batch {run['mean_batch']}"
            f"  wait p50 {run['wait_p50_ms']} ms p99 {run['wait_p99_ms']} ms",
            flush=True,
        )

    # Open loop: everything queued at once, so every batch is full (512): the writer's ceiling.
    records = _fresh_records(gen, args.pool)
    queue = CommitQueue(engine, batch_size=512)
    elapsed = asyncio.run(_burst(queue, records))
    queue.close()
    result["commit_queue_mode"] = "inline" if getattr(queue, "inline", False) else "thread"
    result["commit_queue_burst"] = {
        "records": len(records),
        "per_s": round(len(records) / elapsed),
        "batches": queue.batches,
        "mean_batch": round(queue.committed / queue.batches, 1),
    }
    print(f"[{backend}] CommitQueue burst of {len(records):,}: {result['commit_queue_burst']['per_s']:,}/s", flush=True)

    for batch in args.batch_sizes:
        records = _fresh_records(gen, args.pool)
        done = 0
        t0 = time.perf_counter()
        per_batch = []
        while done < len(records) and time.perf_counter() - t0 < args.duration:
            chunk = records[done : done + batch]
            t1 = time.perf_counter()
            save_completions(engine, chunk)
            per_batch.append(time.perf_counter() - t1)
            done += len(chunk)
        elapsed = time.perf_counter() - t0
        ms = sorted(x * 1000 for x in per_batch)
        run = {
            "batch": batch,
            "rows": done,
            "rows_per_s": round(done / elapsed),
            "commits_per_s": round(len(per_batch) / elapsed),
            "ms_per_batch_p50": round(percentile(ms, 50), 3),
            "ms_per_batch_p99": round(percentile(ms, 99), 3),
            "us_per_row": round(elapsed / done * 1e6, 1),
        }
        result["save_completions"].append(run)
        print(
            f"[{backend}] save_completions batch {batch:>4}  {run['rows_per_s']:>8,} rows/s  "
            f"{run['commits_per_s']:>6,} commits/s  {run['ms_per_batch_p50']} ms/batch",
            flush=True,
        )
    engine.dispose()
    return result


# --- output ----------------------------------------------------------------------------------------------


def plot(results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"sqlite": "#4C72B0", "postgres": "#DD8452"}
    out = []
    backends = [b for b in ("sqlite", "postgres") if b in results["backends"]]
    IMAGES.mkdir(parents=True, exist_ok=True)

    http = {b: results["backends"][b]["http"] for b in backends if "http" in results["backends"][b]}
    if http:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for b, res in http.items():
            runs = [r for r in res["runs"] if r["store"]]
            ax.plot(
                [r["concurrency"] for r in runs],
                [r["stored_per_s"] for r in runs],
                marker="o",
                color=colours[b],
                label=f"{b}: store: true",
            )
            for n, repeat in enumerate(results["backends"][b].get("http_repeats", [])):
                again = [r for r in repeat["runs"] if r["store"]]
                ax.plot(
                    [r["concurrency"] for r in again],
                    [r["stored_per_s"] for r in again],
                    marker=".",
                    linewidth=0.8,
                    alpha=0.5,
                    color=colours[b],
                    label=f"{b}: other runs" if n == 0 else None,
                )
            base = [r for r in res["runs"] if not r["store"]]
            if base:
                ax.axhline(
                    base[0]["requests_per_s"],
                    color=colours[b],
                    linestyle=":",
                    label=f"{b}: store: false (c={base[0]['concurrency']})",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("stored completions per second")
        ax.set_title("Ingest through HTTP (fake upstream, one server process)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = IMAGES / "ingest_http.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    store = {b: results["backends"][b]["storage"] for b in backends if "storage" in results["backends"][b]}
    if store:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        for b, res in store.items():
            cq = res["commit_queue"]
            left.plot([r["submitters"] for r in cq], [r["per_s"] for r in cq], marker="o", color=colours[b], label=b)
            left.axhline(
                res["commit_queue_burst"]["per_s"], color=colours[b], linestyle=":", label=f"{b}: burst (full batches)"
            )
            sc = res["save_completions"]
            right.plot([r["batch"] for r in sc], [r["rows_per_s"] for r in sc], marker="o", color=colours[b], label=b)
        left.set_xscale("log", base=2)
        left.set_xlabel("concurrent submitters (each awaits its commit)")
        left.set_ylabel("completions committed per second")
        left.set_title("CommitQueue (group commit)")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("records per save_completions call")
        right.set_ylabel("completions per second")
        right.set_title("save_completions by batch size")
        for ax in (left, right):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        left.set_ylim(bottom=0)
        fig.tight_layout()
        path = IMAGES / "ingest_storage.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def report(results: dict[str, Any]) -> None:
    for b, res in results["backends"].items():
        if "http" in res:
            print(f"\nHTTP ingest, {b}")
            print_table(
                [
                    "clients",
                    "store",
                    "req/s",
                    "stored/s",
                    "p50 ms",
                    "p99 ms",
                    "mean batch",
                    "cpu srv/pg/client/other %",
                ],
                [
                    [
                        r["concurrency"],
                        r["store"],
                        r["requests_per_s"],
                        r["stored_per_s"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r["group_commit_mean_batch"] or "-",
                        "/".join(str(r["cpu_percent"].get(k, "-")) for k in ("server", "postgres", "client", "other")),
                    ]
                    for r in res["http"]["runs"]
                ],
            )
        if "storage" in res:
            print(f"\nCommitQueue, {b}")
            print_table(
                ["submitters", "per s", "mean batch", "wait p50 ms", "wait p99 ms"],
                [
                    [r["submitters"], r["per_s"], r["mean_batch"], r["wait_p50_ms"], r["wait_p99_ms"]]
                    for r in res["storage"]["commit_queue"]
                ],
            )
            burst = res["storage"]["commit_queue_burst"]
            print(f"burst: {burst['per_s']:,}/s (mean batch {burst['mean_batch']})")
            print(f"\nsave_completions, {b}")
            print_table(
                ["batch", "rows/s", "commits/s", "ms/batch p50", "ms/batch p99", "us/row"],
                [
                    [
                        r["batch"],
                        r["rows_per_s"],
                        r["commits_per_s"],
                        r["ms_per_batch_p50"],
                        r["ms_per_batch_p99"],
                        r["us_per_row"],
                    ]
                    for r in res["storage"]["save_completions"]
                ],
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--part", choices=["http", "storage", "both"], default="both")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per configuration")
    parser.add_argument("--warmup", type=float, default=2.0, help="HTTP: seconds before the window opens")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--concurrency", type=ints, default=[1, 4, 16, 64, 256])
    parser.add_argument("--baseline-concurrency", type=int, default=64, help="HTTP: clients for the store:false run")
    parser.add_argument("--submitters", type=ints, default=[1, 4, 16, 64, 256, 1024])
    parser.add_argument("--batch-sizes", type=ints, default=[1, 10, 100, 500])
    parser.add_argument("--pool", type=int, default=30_000, help="storage: fresh records prepared per configuration")
    parser.add_argument("--keep", action="store_true", help="keep the ingest databases")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    path = RESULTS / RESULT_FILE
    results: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    results.setdefault("backends", {})
    results["environment"] = environment()
    results["command"] = "python -m bench.ingest " + " ".join(sys.argv[1:] if argv is None else argv)
    gen = Generator(seed=21)
    for backend in backends:
        entry = results["backends"].setdefault(backend, {})
        entry["busy_before"] = busy_processes()
        if args.part in ("http", "both"):
            entry["http"] = http_part(backend, args, gen) | {"duration_s": args.duration}
        if args.part in ("storage", "both"):
            entry["storage"] = storage_part(backend, args, gen) | {"duration_s": args.duration}
        entry["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if not args.keep:
            drop_database(backend, DB_NAME[backend])
        write_json(RESULT_FILE, results)
    for image in plot(results):
        print(f"wrote {image}")
    report(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

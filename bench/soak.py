"""Soak: sustained mixed load on a live `stillroom serve` (every model on THE fake upstream) for N minutes,
watching the server process's memory and open file descriptors. Leaks show as a slope; this asserts none.

    .venv/bin/python -m bench.soak --minutes 10
    .venv/bin/python -m bench.soak --minutes 2 --database-url postgresql://postgres@127.0.0.1:5432/somedb

The load, paced at --rate requests/s over --concurrency connections: creates with and without `store`,
streams with and without `store`, lists filtered by metadata, retrieves, lists input messages, updates
metadata, deletes, and upstream faults (a stream cut mid-way, 500, 429, connection reset, a slow upstream
past the model's timeout) since error paths are where connections and tasks leak. Every answer is checked
against what that request must get.

Every --interval seconds it samples the server's RSS, open fds, threads and TCP connections (psutil).
Flat means: the median of the last quarter of the run is within --rss-tolerance (10%) of the median of the
second quarter for RSS, and within --fd-slack (+10) for fds (the first quarter is warm-up). Writes
bench/results/soak.json and docs/img/soak.png; exits 1 when not flat or when any answer was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from tests.fake_upstream import ANSWER
from tests.live import LiveServer, fake_models_config, start_fake_upstream, start_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
KEY = "sk-soak-0123456789"
MODELS: dict[str, tuple[str, float | None]] = {
    "fake": ("fake", 10.0),
    "cut": ("fault-cut", 10.0),
    "error-500": ("fault-500", 10.0),
    "rate-limited": ("fault-429", 10.0),
    "reset": ("fault-reset", 10.0),
    "slow": ("fault-slow", 0.2),
}
# operation -> share of requests
MIX = {
    "create": 0.22,
    "create_store": 0.22,
    "stream": 0.05,
    "stream_store": 0.13,
    "list_metadata": 0.10,
    "retrieve": 0.08,
    "messages": 0.03,
    "update": 0.03,
    "delete": 0.03,
    "fault_cut": 0.04,
    "fault_500": 0.02,
    "fault_429": 0.02,
    "fault_reset": 0.02,
    "fault_slow": 0.01,
}
STREAMED_TEXT = " ".join(ANSWER.split()[:12]) + " "


class Load:
    def __init__(self, client: httpx.AsyncClient, run: str, seed: int) -> None:
        self.client = client
        self.run = run
        self.rng = random.Random(seed)
        self.stored: deque[str] = deque(maxlen=2000)
        self.done: Counter[str] = Counter()
        self.wrong: Counter[str] = Counter()
        self.wrong_examples: list[str] = []
        self.latency: defaultdict[str, list[float]] = defaultdict(list)
        self.transport_errors = 0
        self.sequence = 0

    def _body(self, model: str, *, store: bool, stream: bool) -> dict[str, Any]:
        self.sequence += 1
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Question {self.sequence % 500}"},
            ],
        }
        if store:
            body["store"] = True
            body["metadata"] = {"soak": self.run, "bucket": str(self.sequence % 50)}
        if stream:
            body["stream"] = True
        return body

    def _wrong(self, op: str, detail: str) -> None:
        self.wrong[op] += 1
        if len(self.wrong_examples) < 20:
            self.wrong_examples.append(f"{op}: {detail[:300]}")

    async def _stream(self, body: dict[str, Any]) -> tuple[int, list[bytes]]:
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            events = [line.encode() async for line in response.aiter_lines() if line.startswith("data: ")]
            return response.status_code, events

    async def one(self, op: str) -> None:
        started = time.perf_counter()
        try:
            ok, detail = await getattr(self, "op_" + op)()
        except httpx.HTTPError as exc:
            self.transport_errors += 1
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.latency[op].append(time.perf_counter() - started)
        self.done[op] += 1
        if not ok:
            self._wrong(op, detail)

    async def op_create(self) -> tuple[bool, str]:
        r = await self.client.post("/v1/chat/completions", json=self._body("fake", store=False, stream=False))
        return r.status_code == 200 and "x-stillroom-stored" not in r.headers, r.text

    async def op_create_store(self) -> tuple[bool, str]:
        r = await self.client.post("/v1/chat/completions", json=self._body("fake", store=True, stream=False))
        good = r.status_code == 200 and r.headers.get("x-stillroom-stored") == "true"
        if good:
            self.stored.append(r.json()["id"])
        return good, f"{r.status_code} {r.headers.get('x-stillroom-stored')} {r.text}"

    async def op_stream(self) -> tuple[bool, str]:
        status, events = await self._stream(self._body("fake", store=False, stream=True))
        return status == 200 and events[-1:] == [b"data: [DONE]"], f"{status} {events[-2:]}"

    async def op_stream_store(self) -> tuple[bool, str]:
        status, events = await self._stream(self._body("fake", store=True, stream=True))
        good = status == 200 and events[-1:] == [b"data: [DONE]"]
        if good:
            chunks = [orjson.loads(e[6:]) for e in events[:-1]]
            text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
            good = text == STREAMED_TEXT
            self.stored.append(chunks[0]["id"])
        return good, f"{status} {events[-2:]}"

    async def op_list_metadata(self) -> tuple[bool, str]:
        params = {"metadata[soak]": self.run, "metadata[bucket]": str(self.rng.randrange(50)), "limit": "20"}
        r = await self.client.get("/v1/chat/completions", params=params)
        return r.status_code == 200 and r.json()["object"] == "list", r.text

    def _pick(self) -> str | None:
        return self.stored[self.rng.randrange(len(self.stored))] if self.stored else None

    async def op_retrieve(self) -> tuple[bool, str]:
        completion_id = self._pick()
        if completion_id is None:
            return True, ""
        r = await self.client.get(f"/v1/chat/completions/{completion_id}")
        return r.status_code in (200, 404), r.text  # 404: deleted meanwhile by another worker

    async def op_messages(self) -> tuple[bool, str]:
        completion_id = self._pick()
        if completion_id is None:
            return True, ""
        r = await self.client.get(f"/v1/chat/completions/{completion_id}/messages")
        return r.status_code == 404 or (r.status_code == 200 and len(r.json()["data"]) == 2), r.text

    async def op_update(self) -> tuple[bool, str]:
        completion_id = self._pick()
        if completion_id is None:
            return True, ""
        r = await self.client.post(f"/v1/chat/completions/{completion_id}", json={"metadata": {"seen": "yes"}})
        return r.status_code in (200, 404), r.text

    async def op_delete(self) -> tuple[bool, str]:
        if not self.stored:
            return True, ""
        completion_id = self.stored.popleft()
        r = await self.client.delete(f"/v1/chat/completions/{completion_id}")
        return r.status_code in (200, 404), r.text

    async def op_fault_cut(self) -> tuple[bool, str]:
        status, events = await self._stream(self._body("cut", store=True, stream=True))
        good = status == 200 and bool(events) and b'"bad_gateway"' in events[-1]
        return good, f"{status} {events[-1:]}"

    async def _fault(self, model: str, status: int) -> tuple[bool, str]:
        r = await self.client.post("/v1/chat/completions", json=self._body(model, store=True, stream=False))
        return r.status_code == status, f"{r.status_code} {r.text}"

    async def op_fault_500(self) -> tuple[bool, str]:
        return await self._fault("error-500", 500)

    async def op_fault_429(self) -> tuple[bool, str]:
        return await self._fault("rate-limited", 429)

    async def op_fault_reset(self) -> tuple[bool, str]:
        return await self._fault("reset", 502)

    async def op_fault_slow(self) -> tuple[bool, str]:
        return await self._fault("slow", 504)


def _sample(process: psutil.Process, started: float, requests: int) -> dict[str, Any]:
    with process.oneshot():
        return {
            "t": round(time.monotonic() - started, 2),
            "rss_mb": round(process.memory_info().rss / 2**20, 2),
            "fds": process.num_fds(),
            "threads": process.num_threads(),
            "tcp": len(process.net_connections(kind="tcp")),
            "cpu_s": round(sum(process.cpu_times()[:2]), 2),
            "requests": requests,
        }


async def soak(server: LiveServer, args: argparse.Namespace) -> dict[str, Any]:
    process = psutil.Process(server.process.pid)
    run = uuid.uuid4().hex[:12]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits, timeout=30) as client:
        load = Load(client, run, args.seed)
        ops, weights = list(MIX), list(MIX.values())
        started = time.monotonic()
        deadline = started + args.minutes * 60
        samples = [_sample(process, started, 0)]
        interval = 1.0 / args.rate
        next_slot = [started]

        async def worker() -> None:
            while True:
                slot = next_slot[0] = max(next_slot[0] + interval, time.monotonic() - 1.0)  # pace, no burst backlog
                if slot >= deadline:
                    return
                delay = slot - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await load.one(load.rng.choices(ops, weights)[0])

        async def sampler() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(args.interval)
                samples.append(_sample(process, started, sum(load.done.values())))
                last = samples[-1]
                if len(samples) % max(1, int(60 / args.interval)) == 0:
                    print(
                        f"  {last['t'] / 60:5.1f} min  {last['requests']:>8} requests  rss {last['rss_mb']:.1f} MB  "
                        f"fds {last['fds']}  tcp {last['tcp']}  wrong {sum(load.wrong.values())}",
                        flush=True,
                    )

        await asyncio.gather(sampler(), *(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        samples.append(_sample(process, started, sum(load.done.values())))
        health = (await client.get("/health")).json()
    latency = {
        op: {
            "n": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 2),
            "p99_ms": round(sorted(values)[int(len(values) * 0.99) - 1] * 1000, 2) if len(values) >= 100 else None,
        }
        for op, values in sorted(load.latency.items())
    }
    return {
        "elapsed_s": round(elapsed, 1),
        "requests": sum(load.done.values()),
        "requests_per_s": round(sum(load.done.values()) / elapsed, 1),
        "by_operation": dict(sorted(load.done.items())),
        "wrong_answers": dict(load.wrong),
        "wrong_examples": load.wrong_examples,
        "transport_errors": load.transport_errors,
        "latency": latency,
        "health_after": health,
        "samples": samples,
    }


def flatness(samples: list[dict[str, Any]], rss_tolerance: float, fd_slack: int) -> dict[str, Any]:
    end = samples[-1]["t"]
    second = [s for s in samples if end * 0.25 <= s["t"] < end * 0.5]
    last = [s for s in samples if s["t"] >= end * 0.75]
    verdict: dict[str, Any] = {}
    for name, allowed in (("rss_mb", None), ("fds", fd_slack), ("threads", 2), ("tcp", fd_slack)):
        q2 = statistics.median(s[name] for s in second)
        q4 = statistics.median(s[name] for s in last)
        limit = q2 * (1 + rss_tolerance) if allowed is None else q2 + allowed
        verdict[name] = {"q2_median": q2, "q4_median": q4, "limit": round(limit, 2), "flat": q4 <= limit}
        verdict[name]["min"] = min(s[name] for s in samples)
        verdict[name]["max"] = max(s[name] for s in samples)
    half = [s for s in samples if s["t"] >= end * 0.25]
    if len(half) >= 3:  # least-squares slope after warm-up, for the record
        ts = [s["t"] / 60 for s in half]
        ys = [s["rss_mb"] for s in half]
        mean_t, mean_y = statistics.fmean(ts), statistics.fmean(ys)
        slope = sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True)) / sum(
            (t - mean_t) ** 2 for t in ts
        )
        verdict["rss_mb_per_min_after_warmup"] = round(slope, 3)
    verdict["flat"] = all(v["flat"] for k, v in verdict.items() if isinstance(v, dict))
    return verdict


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(minutes, [s["rss_mb"] for s in samples], color="tab:blue")
    top.set_ylabel("server RSS (MiB)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    flat = result["flatness"]
    top.set_title(
        f"Soak: {result['requests']:,} mixed requests in {result['elapsed_s'] / 60:.0f} min "
        f"({result['requests_per_s']:.0f}/s, {result['database']}) - " + ("flat" if flat["flat"] else "NOT flat")
    )
    bottom.plot(minutes, [s["fds"] for s in samples], color="tab:orange", label="open fds")
    bottom.plot(minutes, [s["tcp"] for s in samples], color="tab:green", label="TCP connections")
    bottom.plot(minutes, [s["threads"] for s in samples], color="tab:gray", label="threads")
    bottom.set_ylabel("count")
    bottom.set_xlabel("minutes")
    bottom.set_ylim(0, max(s["fds"] for s in samples) * 1.35)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper center", ncol=3)
    for axis in (top, bottom):
        axis.axvspan(0, minutes[-1] * 0.25, color="0.92", zorder=0)
    top.text(minutes[-1] * 0.125, 5, "warm-up", ha="center", color="0.4")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=250, help="requests per second (paced)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples")
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--fd-slack", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--plot", type=Path, default=IMAGES / "soak.png")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from an existing --out")
    args = parser.parse_args()
    if args.replot:
        plot(orjson.loads(args.out.read_bytes()), args.plot)
        return

    with tempfile.TemporaryDirectory(prefix="stillroom-soak-") as tmp_name:
        tmp = Path(tmp_name)
        url = args.database_url or f"sqlite:///{tmp / 'soak.db'}"
        fake = start_fake_upstream(tmp / "fake_upstream.log")
        try:
            server = start_server(tmp, url, config=fake_models_config(fake.url, MODELS), api_key=KEY, name="soak")
            try:
                print(f"soak: {args.minutes} min at {args.rate}/s over {args.concurrency} connections on {url}")
                result = asyncio.run(soak(server, args))
                log = server.log()
            finally:
                server.stop()
        finally:
            fake.stop()
    result["database"] = url.split(":", 1)[0]
    result["unhandled_errors_logged"] = log.count("unhandled error")
    result["flatness"] = flatness(result["samples"], args.rss_tolerance, args.fd_slack)
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result["machine"] = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    plot(result, args.plot)
    flat = result["flatness"]
    print(
        f"{result['requests']:,} requests ({result['requests_per_s']}/s), wrong answers {result['wrong_answers']}, "
        f"transport errors {result['transport_errors']}, unhandled errors logged {result['unhandled_errors_logged']}"
    )
    for name in ("rss_mb", "fds", "threads", "tcp"):
        v = flat[name]
        print(
            f"  {name}: 2nd-quarter median {v['q2_median']}, last-quarter median {v['q4_median']} "
            f"(limit {v['limit']}), range {v['min']}..{v['max']} -> {'flat' if v['flat'] else 'GROWING'}"
        )
    print(f"  rss slope after warm-up: {flat.get('rss_mb_per_min_after_warmup')} MiB/min")
    print(f"wrote {args.out} and {args.plot}")
    good = flat["flat"] and not result["wrong_answers"] and not result["unhandled_errors_logged"]
    good = good and result["health_after"]["store"]["failed"] == 0
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()

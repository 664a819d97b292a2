"""What key checks add to the hot path: store:true p50 of an open server vs one that checks a project key, in the
same run, against the named fake upstream (tests/fake_upstream.py, answers at once).

Three targets, measured in interleaved rounds at one open-loop rate: the fake upstream directly, Stillroom with no
key (laptop mode), and Stillroom with a server key where every request carries a `contributor` project key
(`Authorization: Bearer sk-sr-...`). Each Stillroom is its own process on its own SQLite file. The figure is each
gateway's p50 minus the direct p50 of the same round, and keyed minus open.

    .venv/bin/python -m bench.access_overhead [--rate 200] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import LoadGen
from tests.live import LiveServer, fake_models_config, start_fake_upstream, start_server

SERVER_KEY = "sk-bench-server-key-0123456789"
BODY = {
    "model": "fake",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant for the access overhead benchmark."},
        {"role": "user", "content": "Say hello."},
    ],
    "store": True,
    "metadata": {"bench": "access", "round": "x"},
}


def _project_key(server: LiveServer) -> str:
    made = httpx.post(server.url + "/v1/organization/projects", json={"name": "bench"}, headers=_admin())
    made.raise_for_status()
    issued = httpx.post(
        f"{server.url}/v1/organization/projects/{made.json()['id']}/api_keys",
        json={"role": "contributor"},
        headers=_admin(),
    )
    issued.raise_for_status()
    key: str = issued.json()["value"]
    return key


def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {SERVER_KEY}"}


async def _measure(url: str, headers: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
    gen = LoadGen(url, json.dumps(BODY).encode(), headers, marker=b"x-stillroom-stored: true")
    try:
        await gen.open_loop(rate, 2.0, connections=32)  # warm-up
        result = await gen.open_loop(rate, seconds, connections=32)
    finally:
        await gen.close()
    return {
        "p50": result.latency_ms["p50"],
        "p99": result.latency_ms["p99"],
        "ok": result.ok,
        "hits": result.marker_hits,
    }


async def _run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    fake = start_fake_upstream(tmp / "fake.log")
    config = fake_models_config(fake.url, {"fake": ("fake", None)})
    servers: list[LiveServer] = []
    try:
        open_server = start_server(tmp, f"sqlite:///{tmp / 'open.db'}", config=config, name="open")
        servers.append(open_server)
        keyed = start_server(tmp, f"sqlite:///{tmp / 'keyed.db'}", config=config, api_key=SERVER_KEY, name="keyed")
        servers.append(keyed)
        key = _project_key(keyed)
        targets = {
            "direct": (fake.url + "/chat/completions", {}),
            "open": (open_server.url + "/v1/chat/completions", {}),
            "keyed": (keyed.url + "/v1/chat/completions", {"authorization": f"Bearer {key}"}),
        }
        rounds = []
        for i in range(args.rounds):
            row = {name: await _measure(url, h, args.rate, args.seconds) for name, (url, h) in targets.items()}
            row["added_open_ms"] = row["open"]["p50"] - row["direct"]["p50"]
            row["added_keyed_ms"] = row["keyed"]["p50"] - row["direct"]["p50"]
            row["keyed_minus_open_ms"] = row["keyed"]["p50"] - row["open"]["p50"]
            print(
                f"round {i + 1}: direct p50 {row['direct']['p50']:.3f} ms; stored p50 added: open "
                f"{row['added_open_ms']:.3f} ms, keyed {row['added_keyed_ms']:.3f} ms, "
                f"keyed - open {row['keyed_minus_open_ms']:+.3f} ms "
                f"(stored {row['open']['hits']}/{row['open']['ok']}, {row['keyed']['hits']}/{row['keyed']['ok']})",
                flush=True,
            )
            rounds.append(row)
        return {
            "rate": args.rate,
            "seconds": args.seconds,
            "rounds": rounds,
            "median_added_open_ms": statistics.median(r["added_open_ms"] for r in rounds),
            "median_added_keyed_ms": statistics.median(r["added_keyed_ms"] for r in rounds),
            "median_keyed_minus_open_ms": statistics.median(r["keyed_minus_open_ms"] for r in rounds),
        }
    finally:
        for server in servers:
            server.stop()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three targets")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(_run(args, Path(tmp)))
    print(
        f"median over {args.rounds} rounds at {args.rate:g} req/s: stored p50 added open "
        f"{results['median_added_open_ms']:.3f} ms, keyed {results['median_added_keyed_ms']:.3f} ms, "
        f"keyed - open {results['median_keyed_minus_open_ms']:+.3f} ms"
    )
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
